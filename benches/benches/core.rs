//! Micro-benchmarks of the protocol core's hot paths, without I/O (criterion):
//!
//! * `delivery/100b-x64`: three members of one ordered shard in memory; each sends 64 messages
//!   of 100 B, the pushes are copied between their tables, and every member delivers all 192:
//!   the send, receive and delivery rules together, per batch.
//! * `stability/idle`: the rules run once with nothing new in the table (what a poll costs
//!   when a peer's push changed nothing that matters).
//! * `call/validate-100b` and `call/apply-100b`: an ordered call's arguments (a key and 100 B)
//!   validated in place (rkyv's checked access), and dispatched to a `#[replicated]` handler.
//! * `frame/header`: an RPC header written and read back (every call and reply carries one).
//!
//! Run with `cargo bench -p derecho-benches --bench core`; `-- --quick` for a short run.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use derecho::prelude::*;
use derecho::protocol::sst::{HeapMemory, SstMemory};
use derecho::protocol::{DeliveryMode, Limits, Node, Output, ShardLayout, Time, ViewId};
use derecho::rkyv;
use derecho::rpc::Replicated;
use derecho::rpc::wire::{HEADER_LEN, Header, Kind};

const SHARD: ShardRef = ShardRef::new(0, 0);

/// Three members of one ordered shard, each with its own copy of the table.
fn members() -> Vec<Node<HeapMemory>> {
    let ids: Vec<NodeId> = (0..3).map(NodeId).collect();
    let view = View {
        id: ViewId(0),
        members: ids.clone(),
        shards: vec![ShardLayout {
            id: SHARD,
            members: ids.clone(),
            senders: ids.clone(),
            mode: DeliveryMode::Ordered,
        }],
    };
    let limits = Limits::default();
    let len = Node::<HeapMemory>::table_len(&view, &limits);
    ids.iter().map(|&me| Node::new(me, view.clone(), &limits, HeapMemory::new(len)).expect("a node")).collect()
}

/// Copies every push out of every member into its peers' tables, and tells them; returns how
/// many pushes were copied.
fn exchange(nodes: &mut [Node<HeapMemory>], now: Time, scratch: &mut Vec<u8>) -> usize {
    let mut copied = 0;
    for from in 0..nodes.len() {
        while let Some(o) = nodes[from].poll_output() {
            let Output::Push { range, to } = o else { continue };
            scratch.clear();
            scratch.extend_from_slice(nodes[from].memory().slice(range.clone()));
            for peer in to.iter() {
                nodes[peer.0 as usize].memory_mut().apply(range.start, scratch);
            }
            copied += 1;
        }
    }
    for n in nodes.iter_mut() {
        n.handle(now, derecho::protocol::Input::RowsChanged);
    }
    copied
}

fn delivery(c: &mut Criterion) {
    let payload = [7u8; 100];
    c.bench_function("delivery/100b-x64", |b| {
        let mut nodes = members();
        let mut scratch = Vec::new();
        let mut t = 1u64;
        b.iter(|| {
            for n in nodes.iter_mut() {
                for _ in 0..64 {
                    n.send(Time(t), SHARD, payload.len(), |buf| buf.copy_from_slice(&payload))
                        .expect("room in the window");
                }
            }
            let mut delivered = 0;
            while delivered < 3 * 192 {
                t += 1;
                exchange(&mut nodes, Time(t), &mut scratch);
                for n in nodes.iter_mut() {
                    delivered += n.deliver(|d| {
                        black_box(d.payload);
                    });
                }
            }
            black_box(delivered)
        });
    });
}

fn stability(c: &mut Criterion) {
    c.bench_function("stability/idle", |b| {
        let mut nodes = members();
        let mut t = 1u64;
        b.iter(|| {
            t += 1;
            nodes[0].handle(Time(t), derecho::protocol::Input::RowsChanged);
            black_box(nodes[0].deliver(|_| {}))
        });
    });
}

/// The benchmark's replicated type: a map of byte values.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rkyv)]
pub struct Bytes {
    entries: BTreeMap<String, Vec<u8>>,
}

#[replicated]
impl Bytes {
    /// Stores `value` under `key`; its length.
    pub fn put(&mut self, key: &str, value: &[u8]) -> u64 {
        self.entries.insert(key.to_owned(), value.to_vec());
        value.len() as u64
    }
}

/// The arguments of `put` as the generated client archives them (a key and the bytes).
#[derive(Archive, Serialize)]
#[rkyv(crate = derecho::rkyv)]
struct PutArgs {
    key: String,
    value: Vec<u8>,
}

fn calls(c: &mut Criterion) {
    let args = rkyv::to_bytes::<rkyv::rancor::Error>(&PutArgs { key: "key-17".into(), value: vec![3; 100] })
        .expect("archived");
    let mut store = Bytes::default();
    // The bytes are what the handler expects: checked once, outside the measurement.
    assert!(matches!(Replicated::apply(&mut store, 0, &args), derecho::rpc::Applied::Now(Ok(_))));
    c.bench_function("call/validate-100b", |b| {
        b.iter(|| rkyv::access::<ArchivedPutArgs, rkyv::rancor::Error>(black_box(&args)).map(|a| a.value.len()))
    });
    c.bench_function("call/apply-100b", |b| {
        b.iter(|| match Replicated::apply(&mut store, 0, black_box(&args)) {
            derecho::rpc::Applied::Now(r) => r.map(|v| v.len()).ok(),
            _ => None,
        })
    });
}

fn frames(c: &mut Criterion) {
    let header = Header {
        kind: Kind::Ordered,
        shard: SHARD,
        method: 3,
        caller: NodeId(2),
        call: 99,
        version: Version::from_u64(0),
        flags: 0,
    };
    let mut buf = [0u8; HEADER_LEN + 100];
    c.bench_function("frame/header", |b| {
        b.iter(|| {
            black_box(&header).write(&mut buf);
            Header::read(black_box(&buf)).map(|(h, rest)| (h.call, rest.len())).ok()
        })
    });
}

criterion_group!(core, delivery, stability, calls, frames);
criterion_main!(core);
