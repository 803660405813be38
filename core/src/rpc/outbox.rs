//! Replies and queries leave in batches: everything queued for one member goes in one frame
//! (or a few), each message 16-byte aligned so that its body is read in place.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::rc::Weak;
use std::task::Poll;

use rkyv::util::AlignedVec;

use super::CallError;
use super::replicated::HandlerError;
use super::service::ServiceInner;
use super::wire::{HEADER_LEN, Header, Kind};
use crate::driver::{GroupSender, SendToError};
use crate::protocol::wire::app_frame;
use crate::protocol::{NodeId, Version};

/// The last replies sent to each caller, oldest first (searched only when a caller asks again,
/// which is rare: after a view change).
pub(super) type SentReplies = BTreeMap<NodeId, VecDeque<(u64, Vec<u8>)>>;

/// Replies kept per caller for callers that ask again ([`wire::Kind::Repeat`]).
pub(super) const REPLY_CACHE_LEN: usize = 1 << 14;
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
        self.send_with(to, HEADER_LEN + body.len(), |f| {
            let start = f.len();
            f.resize(start + HEADER_LEN, 0);
            h.write(&mut f[start..]);
            f.extend_from_slice(body);
        });
    }

    /// Queues an error reply to the call `h` for `to`.
    pub(super) fn send_error(&self, to: NodeId, h: &Header, why: &str) {
        self.send_parts(to, &Header { kind: Kind::Error, version: Version::from_u64(0), ..*h }, why.as_bytes());
    }

    /// Remembers a reply sent to `caller`, for a repeat.
    pub(super) fn keep_sent(&self, caller: NodeId, call: u64, bytes: Vec<u8>) {
        let mut sent = self.sent.borrow_mut();
        let q = sent.entry(caller).or_default();
        if q.len() >= REPLY_CACHE_LEN {
            q.pop_front();
        }
        q.push_back((call, bytes));
    }
}

pub(super) fn reply_bytes(h: &Header, version: Option<Version>, result: &Result<AlignedVec, HandlerError>) -> Vec<u8> {
    match result {
        Ok(bytes) => {
            Header { kind: Kind::Reply, version: version.unwrap_or(Version::from_u64(0)), ..*h }.with_body(bytes)
        }
        Err(e) => error_bytes(h, &e.to_string()),
    }
}

pub(super) fn error_bytes(h: &Header, why: &str) -> Vec<u8> {
    Header { kind: Kind::Error, version: Version::from_u64(0), ..*h }.with_body(why.as_bytes())
}
