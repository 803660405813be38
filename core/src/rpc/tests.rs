//! The service driven by hand, without a group: what it sends for what it is given.

use std::collections::BTreeMap;

use rkyv::util::AlignedVec;

use super::calls::new_pending;
use super::outbox::batch_messages;
use super::replicated::{Applied, HandlerError, Method, Replicated, StateError};
use super::wire::{Header, Kind, RemoteKind};
use super::{CallError, Service};
use crate::driver::{Application, ViewChange};
use crate::protocol::wire::APP_FRAME_HEADER_LEN;
use crate::protocol::{
    Delivered, DeliveryMode, NodeId, ShardIndex, ShardLayout, ShardRef, SubgroupId, Version, View, ViewId,
};

/// A counter with one synchronous ordered method (`bump`: the count after it).
#[derive(Default)]
struct Counter(u64);

impl Replicated for Counter {
    type Client = super::Handle<Self>;
    const NAME: &'static str = "Counter";
    const METHODS: &'static [Method] = &[Method { name: "bump", ordered: true, is_async: false }];
    const FINGERPRINT: u64 = 1;

    fn apply<'a>(&'a mut self, method: u32, _args: &[u8]) -> Applied<'a> {
        if method != 0 {
            return Applied::Now(Err(HandlerError::NoSuchMethod { ty: Self::NAME, method, kind: "ordered" }));
        }
        self.0 += 1;
        let mut v = AlignedVec::new();
        v.extend_from_slice(&self.0.to_le_bytes());
        Applied::Now(Ok(v))
    }

    fn query<'a>(&'a self, method: u32, _args: &[u8]) -> Applied<'a> {
        Applied::Now(Err(HandlerError::NoSuchMethod { ty: Self::NAME, method, kind: "query" }))
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.0.to_le_bytes().to_vec())
    }

    fn restore(state: &[u8]) -> Result<Self, StateError> {
        let bytes = state.try_into().map_err(|_| StateError::Short { ty: Self::NAME, len: state.len() })?;
        Ok(Self(u64::from_le_bytes(bytes)))
    }
}

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const ME: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);

fn view(id: u32) -> ViewChange {
    let members = vec![ME, PEER];
    let shard =
        ShardLayout { id: SHARD, members: members.clone(), senders: members.clone(), mode: DeliveryMode::Ordered };
    ViewChange {
        view: View { id: ViewId(id), members, shards: vec![shard] },
        joined: Vec::new(),
        departed: Vec::new(),
        inadequate: None,
        awaiting_state: Vec::new(),
    }
}

/// A service at member 1 of a two-member shard, in view 1.
fn service() -> Service {
    let s = Service::new();
    s.host(SubgroupId(0), Counter::default);
    s.inner.me.set(Some(ME));
    s.clone().view_installed(&view(1));
    s
}

fn header(kind: Kind, caller: NodeId, call: u64) -> Header {
    Header { kind, shard: SHARD, method: 0, caller, call, version: Version::from_u64(0), flags: 0 }
}

/// Takes what the service queued to send: each message with its destination.
fn sent(s: &Service) -> Vec<(NodeId, Vec<u8>)> {
    let frames = std::mem::take(&mut *s.inner.outbox.borrow_mut());
    s.inner.outbox_len.set(0);
    let mut out = Vec::new();
    for (to, frame) in frames {
        for m in batch_messages(&frame[APP_FRAME_HEADER_LEN..]) {
            out.push((to, m.expect("a well-formed batch").to_vec()));
        }
    }
    out
}

/// Member 2's ordered call `call`, delivered here at version (1, index).
fn deliver_call(s: &mut Service, call: u64, index: u64) {
    let payload = header(Kind::Ordered, PEER, call).with_body(&[]);
    s.deliver(Delivered {
        shard: SHARD,
        sender: PEER,
        index,
        version: Some(Version::new(ViewId(1), index)),
        timestamp: crate::protocol::Time(0),
        payload: &payload,
    });
}

fn receive(s: &mut Service, from: NodeId, message: &[u8]) {
    let mut frame = crate::protocol::wire::app_frame(&[]);
    frame.extend_from_slice(&(message.len() as u32).to_le_bytes());
    frame.resize(frame.len() + 12, 0);
    frame.extend_from_slice(message);
    s.receive(from, &frame[APP_FRAME_HEADER_LEN..]);
}

#[test]
fn a_reply_sent_before_a_view_change_is_sent_again_when_its_caller_asks() {
    let mut s = service();
    deliver_call(&mut s, 5, 0);
    let first = sent(&s);
    assert_eq!(first.len(), 1);
    let (to, reply) = &first[0];
    assert_eq!(*to, PEER);
    let (h, body) = Header::read(reply).unwrap();
    assert_eq!((h.kind, h.call, body), (Kind::Reply, 5, &1u64.to_le_bytes()[..]));
    // The frame is lost with view 1's transport; the caller asks again in view 2.
    s.view_installed(&view(2));
    receive(&mut s, PEER, &header(Kind::Repeat, PEER, 5).with_body(&[]));
    assert_eq!(sent(&s), first, "the same reply, sent again");
}

#[test]
fn a_repeat_of_a_reply_not_kept_is_answered_reply_lost() {
    let mut s = service();
    s.view_installed(&view(2));
    receive(&mut s, PEER, &header(Kind::Repeat, PEER, 9).with_body(&[]));
    let out = sent(&s);
    assert_eq!(out.len(), 1);
    let (h, body) = Header::read(&out[0].1).unwrap();
    assert_eq!((out[0].0, h.kind, h.call), (PEER, Kind::Error, 9));
    assert_eq!(RemoteKind::read(body).0, RemoteKind::ReplyLost);
    // A repeat in another member's name is ignored.
    receive(&mut s, PEER, &header(Kind::Repeat, NodeId(3), 9).with_body(&[]));
    assert_eq!(sent(&s), []);
}

#[test]
fn a_kept_reply_is_forgotten_two_views_after_it_was_last_sent() {
    let mut s = service();
    deliver_call(&mut s, 5, 0);
    sent(&s);
    s.view_installed(&view(2));
    s.view_installed(&view(3));
    receive(&mut s, PEER, &header(Kind::Repeat, PEER, 5).with_body(&[]));
    let out = sent(&s);
    let (h, body) = Header::read(&out[0].1).unwrap();
    assert_eq!((h.kind, RemoteKind::read(body).0), (Kind::Error, RemoteKind::ReplyLost));
}

#[test]
fn a_reply_lost_error_completes_the_callers_reply_with_a_typed_error() {
    let mut s = service();
    let call = new_pending(&s.inner, SHARD, None);
    s.inner.pending.borrow_mut().get_mut(&call).unwrap().expected = Some(vec![ME, PEER].into());
    let body = [&[RemoteKind::ReplyLost as u8][..], b"gone"].concat();
    receive(&mut s, PEER, &header(Kind::Error, ME, call).with_body(&body));
    let body = [&[RemoteKind::Overloaded as u8][..], b"busy"].concat();
    receive(&mut s, ME, &header(Kind::Error, ME, call).with_body(&body));
    let pending = s.inner.pending.borrow();
    let replies: BTreeMap<NodeId, String> =
        pending[&call].replies.iter().map(|(n, r)| (*n, format!("{:?}", r.as_ref().unwrap_err()))).collect();
    assert_eq!(replies[&PEER], format!("{:?}", CallError::ReplyLost { node: PEER }));
    assert!(
        matches!(pending[&call].replies[&ME], Err(CallError::Remote { kind: RemoteKind::Overloaded, .. })),
        "{replies:?}"
    );
}

#[test]
fn a_call_dropped_by_the_group_at_a_view_change_fails_not_delivered() {
    let mut s = service();
    let call = new_pending(&s.inner, SHARD, None);
    s.inner.pending.borrow_mut().get_mut(&call).unwrap().sent_in = Some(ViewId(1));
    let later = new_pending(&s.inner, SHARD, None);
    s.inner.pending.borrow_mut().get_mut(&later).unwrap().sent_in = Some(ViewId(2));
    s.view_installed(&view(2));
    s.resend_failed(SHARD, 1);
    let pending = s.inner.pending.borrow();
    assert!(matches!(pending[&call].failed, Some(CallError::NotDelivered(SHARD))), "{:?}", pending[&call].failed);
    assert!(pending[&later].failed.is_none(), "a call sent in the new view is not failed");
}
