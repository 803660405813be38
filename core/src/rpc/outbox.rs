//! Replies and queries leave in batches: everything queued for one member goes in one frame
//! (or a few), each message 16-byte aligned so that its body is read in place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::poll_fn;
use std::rc::Weak;
use std::task::Poll;

use rkyv::util::AlignedVec;

use super::CallError;
use super::replicated::HandlerError;
use super::service::ServiceInner;
use super::wire::{HEADER_LEN, Header, Kind, RemoteKind};
use crate::driver::{GroupSender, SendToError};
use crate::protocol::wire::app_frame;
use crate::protocol::{NodeId, Version, ViewId};

/// The replies to ordered calls sent to one caller, kept because a view change can lose a
/// reply already sent (the caller then asks again with [`Kind::Repeat`]), and the calls whose
/// reply is still being computed. Bounded: at most [`REPLY_CACHE_LEN`] replies and
/// [`REPLY_CACHE_BYTES`] bytes (the newest is always kept), each forgotten once two views have
/// been installed since it was last sent.
///
/// The messages lie end to end in one ring of bytes: keeping a reply copies it in and forgets
/// the oldest, with no allocation once the ring has grown (a reply is kept for every ordered
/// call, so this is on the path of every call).
#[derive(Default)]
pub(super) struct ReplyCache {
    /// (call, the view it was last sent in, its length in `bytes`), oldest first.
    replies: VecDeque<(u64, ViewId, usize)>,
    /// The messages of `replies`, in the same order.
    bytes: VecDeque<u8>,
    /// Ordered calls delivered here and not yet answered (queued for the shard's worker).
    in_work: BTreeSet<u64>,
}

/// What a member can do for a caller that asks for a reply again.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Again {
    /// Send this message again.
    Send(Vec<u8>),
    /// The call is still being run: its reply is sent when it is ready.
    Coming,
    /// The reply is no longer kept (or the call was never delivered here).
    Lost,
}

impl ReplyCache {
    /// Keeps the reply to `call` (the whole message), sent in `view`.
    pub(super) fn keep(&mut self, call: u64, view: ViewId, message: &[u8]) {
        if !self.in_work.is_empty() {
            self.in_work.remove(&call);
        }
        self.bytes.extend(message);
        self.replies.push_back((call, view, message.len()));
        while self.replies.len() > 1 && (self.replies.len() > REPLY_CACHE_LEN || self.bytes.len() > REPLY_CACHE_BYTES) {
            let (_, _, len) = self.replies.pop_front().expect("more than one");
            self.bytes.drain(..len);
        }
    }

    /// Notes that `call` was delivered and its reply is being computed.
    pub(super) fn working_on(&mut self, call: u64) {
        self.in_work.insert(call);
    }

    /// What to do for a repeat of `call` in `view` (a reply sent again is kept as sent in it).
    pub(super) fn again(&mut self, call: u64, view: ViewId) -> Again {
        let mut end = self.bytes.len();
        for (c, sent_in, len) in self.replies.iter_mut().rev() {
            if *c == call {
                *sent_in = view;
                return Again::Send(self.bytes.range(end - *len..end).copied().collect());
            }
            end -= *len;
        }
        if self.in_work.contains(&call) { Again::Coming } else { Again::Lost }
    }

    /// Forgets replies last sent before the view before `view` (the caller asked again, if it
    /// missed them, in the view after they were sent).
    pub(super) fn installed(&mut self, view: ViewId) {
        let keep = |sent_in: ViewId| sent_in.0.saturating_add(1) >= view.0;
        if self.replies.iter().all(|(_, sent_in, _)| keep(*sent_in)) {
            return;
        }
        let mut bytes = VecDeque::with_capacity(self.bytes.len());
        let mut at = 0;
        self.replies.retain(|(_, sent_in, len)| {
            let (start, end) = (at, at + *len);
            at = end;
            if keep(*sent_in) {
                bytes.extend(self.bytes.range(start..end));
            }
            keep(*sent_in)
        });
        self.bytes = bytes;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.in_work.is_empty()
    }

    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        (self.replies.len(), self.bytes.len())
    }
}

/// The [`ReplyCache`] of each caller.
pub(super) type SentReplies = BTreeMap<NodeId, ReplyCache>;

/// Replies kept per caller for callers that ask again ([`Kind::Repeat`]).
pub(super) const REPLY_CACHE_LEN: usize = 1 << 12;
/// Bytes of replies kept per caller (beyond this, the oldest are forgotten; the newest is kept
/// whatever its size).
pub(super) const REPLY_CACHE_BYTES: usize = 1 << 20;
/// The largest batch frame; a single larger message goes alone.
pub(super) const BATCH_LEN_MAX: usize = 1 << 20;
/// Messages waiting to be sent; beyond this, queries from peers are refused.
pub(super) const OUTBOX_LEN_MAX: usize = 1 << 18;
/// Bytes before each message of a batch: its length (`u32`) and padding, so that every
/// message starts 16-byte aligned (its body is read in place).
pub(super) const BATCH_PREFIX: usize = 16;

/// The messages of a batch frame; stops at the first malformed length.
pub(super) fn batch_messages(mut body: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        if body.len() < BATCH_PREFIX {
            body = &[];
            return Some(Err("a batch shorter than a message prefix"));
        }
        let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let end = BATCH_PREFIX.saturating_add(len);
        if end > body.len() {
            body = &[];
            return Some(Err("a message longer than its batch"));
        }
        let msg = &body[BATCH_PREFIX..end];
        body = &body[end.next_multiple_of(16).min(body.len())..];
        Some(Ok(msg))
    })
}

/// Sends the frames the service filled: everything queued for one member leaves in one frame
/// (or a few, each at most [`BATCH_LEN_MAX`]).
pub(super) async fn outbox(inner: Weak<ServiceInner>, sender: GroupSender) {
    loop {
        let frames = poll_fn(|cx| {
            let Some(inner) = inner.upgrade() else { return Poll::Ready(None) };
            let mut q = inner.outbox.borrow_mut();
            if q.is_empty() {
                *inner.outbox_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            inner.outbox_len.set(0);
            Poll::Ready(Some(std::mem::take(&mut *q)))
        })
        .await;
        let Some(frames) = frames else { return };
        for (to, frame) in frames {
            if let Err(e) = sender.send_app_frame(to, frame).await {
                tracing::debug!(%to, error = %e, "replies or queries not sent");
                if matches!(e, SendToError::Closed) {
                    if let Some(inner) = inner.upgrade() {
                        inner.fail_all(|| CallError::Closed);
                    }
                    return;
                }
            }
        }
    }
}

impl ServiceInner {
    /// Queues a message of `len` bytes for `to`, written by `write` straight into the frame
    /// being filled for it: a length, padding, the message, padding to 16 bytes.
    pub(super) fn send_with(&self, to: NodeId, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        self.send_seen(to, len, write, |_| {});
    }

    /// As [`Self::send_with`], then shows `seen` the message as written in the frame.
    fn send_seen(&self, to: NodeId, len: usize, write: impl FnOnce(&mut Vec<u8>), seen: impl FnOnce(&[u8])) {
        let mut q = self.outbox.borrow_mut();
        let room = |f: &Vec<u8>| f.len() + BATCH_PREFIX + len <= BATCH_LEN_MAX;
        let i = match q.iter().rposition(|(t, f)| *t == to && room(f)) {
            Some(i) => i,
            None => {
                q.push((to, app_frame(&[])));
                q.len() - 1
            }
        };
        let f = &mut q[i].1;
        f.extend_from_slice(&(len as u32).to_le_bytes());
        f.resize(f.len() + BATCH_PREFIX - 4, 0);
        let start = f.len();
        write(f);
        debug_assert_eq!(f.len() - start, len, "a message wrote another length than it announced");
        seen(&f[start..]);
        f.resize(f.len().next_multiple_of(16), 0);
        drop(q);
        self.outbox_len.set(self.outbox_len.get() + 1);
        if let Some(w) = self.outbox_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Queues a whole message (header included) for `to`.
    pub(super) fn send(&self, to: NodeId, msg: &[u8]) {
        self.send_with(to, msg.len(), |f| f.extend_from_slice(msg));
    }

    /// Queues a header and a body for `to`, with no intermediate buffer.
    pub(super) fn send_parts(&self, to: NodeId, h: &Header, body: &[u8]) {
        self.send_parts_seen(to, h, body, |_| {});
    }

    fn send_parts_seen(&self, to: NodeId, h: &Header, body: &[u8], seen: impl FnOnce(&[u8])) {
        let write = |f: &mut Vec<u8>| {
            let start = f.len();
            f.resize(start + HEADER_LEN, 0);
            h.write(&mut f[start..]);
            f.extend_from_slice(body);
        };
        self.send_seen(to, HEADER_LEN + body.len(), write, seen);
    }

    /// Queues an error reply to the call `h` for `to`.
    pub(super) fn send_error(&self, to: NodeId, h: &Header, kind: RemoteKind, why: &str) {
        self.send_error_seen(to, h, kind, why, |_| {});
    }

    fn send_error_seen(&self, to: NodeId, h: &Header, kind: RemoteKind, why: &str, seen: impl FnOnce(&[u8])) {
        let header = Header { kind: Kind::Error, version: Version::from_u64(0), ..*h };
        let write = |f: &mut Vec<u8>| {
            let start = f.len();
            f.resize(start + HEADER_LEN, 0);
            header.write(&mut f[start..]);
            f.push(kind as u8);
            f.extend_from_slice(why.as_bytes());
        };
        self.send_seen(to, HEADER_LEN + 1 + why.len(), write, seen);
    }

    /// Sends the reply to the ordered call `h` of its caller (`result`, or the error it is) and
    /// keeps it in case a view change loses it: written once into the frame, copied from there
    /// into the caller's [`ReplyCache`].
    pub(super) fn send_kept(
        &self,
        to: NodeId,
        h: &Header,
        version: Option<Version>,
        result: &Result<AlignedVec, HandlerError>,
    ) {
        let view = self.view.borrow().as_ref().map_or(ViewId(0), |v| v.id);
        let mut sent = self.sent.borrow_mut();
        let cache = sent.entry(h.caller).or_default();
        let keep = |message: &[u8]| cache.keep(h.call, view, message);
        match result {
            Ok(body) => {
                let header = Header { kind: Kind::Reply, version: version.unwrap_or(Version::from_u64(0)), ..*h };
                self.send_parts_seen(to, &header, body, keep);
            }
            Err(e) => self.send_error_seen(to, h, e.kind(), &e.to_string(), keep),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        vec![7; len]
    }

    #[test]
    fn a_kept_reply_is_sent_again_and_restamped() {
        let mut c = ReplyCache::default();
        c.working_on(1);
        assert_eq!(c.again(1, ViewId(3)), Again::Coming);
        c.keep(1, ViewId(3), &message(40));
        assert_eq!(c.again(1, ViewId(4)), Again::Send(message(40)));
        assert_eq!(c.again(2, ViewId(4)), Again::Lost);
        // Sent again in view 4: kept through view 5, gone at view 6.
        c.installed(ViewId(5));
        assert_eq!(c.again(1, ViewId(5)), Again::Send(message(40)));
        c.installed(ViewId(7));
        assert_eq!(c.again(1, ViewId(7)), Again::Lost);
        assert!(c.is_empty());
        assert_eq!(c.len_and_bytes(), (0, 0));
    }

    #[test]
    fn the_cache_is_bounded_by_count_and_bytes_and_keeps_the_newest() {
        let mut c = ReplyCache::default();
        for call in 0..REPLY_CACHE_LEN as u64 + 10 {
            c.keep(call, ViewId(1), &message(8));
        }
        assert_eq!(c.len_and_bytes(), (REPLY_CACHE_LEN, REPLY_CACHE_LEN * 8));
        assert_eq!(c.again(9, ViewId(1)), Again::Lost);
        assert_eq!(c.again(10, ViewId(1)), Again::Send(message(8)));
        c.keep(u64::MAX, ViewId(1), &message(REPLY_CACHE_BYTES + 1));
        assert_eq!(c.len_and_bytes(), (1, REPLY_CACHE_BYTES + 1), "one reply over the byte bound is kept alone");
        c.keep(0, ViewId(1), &message(REPLY_CACHE_BYTES / 2));
        assert_eq!(c.len_and_bytes(), (1, REPLY_CACHE_BYTES / 2));
    }

    #[test]
    fn each_reply_comes_back_whole_after_the_oldest_are_forgotten() {
        // Distinct messages of distinct lengths: an offset off by one shows.
        let distinct =
            |call: u64| -> Vec<u8> { (0..(call as usize % 7) + 1).map(|i| (call as u8) ^ (i as u8)).collect() };
        let mut c = ReplyCache::default();
        for call in 0..REPLY_CACHE_LEN as u64 + 5 {
            c.keep(call, ViewId(1 + (call % 2) as u32), &distinct(call));
        }
        assert_eq!(c.again(4, ViewId(2)), Again::Lost);
        for call in [5, 6, 100, REPLY_CACHE_LEN as u64 + 4] {
            assert_eq!(c.again(call, ViewId(1 + (call % 2) as u32)), Again::Send(distinct(call)), "call {call}");
        }
        // View 3 forgets the replies last sent in view 1 (the even calls), from the middle too.
        c.installed(ViewId(3));
        for call in [5, 6, 7, 100, 101] {
            let want = if call % 2 == 1 { Again::Send(distinct(call)) } else { Again::Lost };
            assert_eq!(c.again(call, ViewId(3)), want, "call {call}");
        }
        let odd = (5..REPLY_CACHE_LEN as u64 + 5).filter(|c| c % 2 == 1);
        let (len, bytes) = (odd.clone().count(), odd.map(|c| distinct(c).len()).sum::<usize>());
        assert_eq!(c.len_and_bytes(), (len, bytes));
    }
}
