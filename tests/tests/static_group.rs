//! The static-group driver on real transports: members on their own executor threads (one
//! process), every member sending, every member delivering the same messages in the same order.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use derecho::driver::StaticGroup;
use derecho::protocol::{DeliveryMode, Limits, NodeId, ShardIndex, ShardLayout, ShardRef, SubgroupId, View, ViewId};
use derecho::{AnyTransport, Builder, PeerId, ShmConfig, ShmTransport, TcpConfig, TcpListener, TcpTransport};

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Tcp,
    Shm,
}

fn view(n: u32) -> View {
    let members: Vec<NodeId> = (0..n).map(NodeId).collect();
    View {
        id: ViewId(0),
        shards: vec![ShardLayout {
            id: SHARD,
            members: members.clone(),
            senders: members.clone(),
            mode: DeliveryMode::Ordered,
        }],
        members,
    }
}

type Log = Vec<(u32, u64, u64, Vec<u8>)>;

/// Runs `n` members, each sending `per_sender` messages; returns each member's delivery log.
fn run(which: Which, n: u32, per_sender: u32) -> Vec<Log> {
    static NS: AtomicU32 = AtomicU32::new(0);
    let ns = format!("sg{}-{}", std::process::id(), NS.fetch_add(1, Ordering::Relaxed));
    let limits = Limits { window_len: 16, payload_len_max: 512, ring_len: 16 << 10, ..Limits::default() };
    let listeners: Vec<Option<TcpListener>> = (0..n)
        .map(|_| (which == Which::Tcp).then(|| TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap()))
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.as_ref().map(|l| l.local_addr())).collect();
    let mut threads = Vec::new();
    for (me, listener) in (0..n).zip(listeners) {
        let (addrs, ns, limits) = (addrs.clone(), ns.clone(), limits.clone());
        threads.push(
            Builder::new()
                .spawn_thread(move || async move {
                    let others: Vec<u32> = (0..n).filter(|&p| p != me).collect();
                    let transport = match which {
                        Which::Tcp => {
                            let peers = others.iter().map(|&p| (PeerId(p), addrs[p as usize].unwrap())).collect();
                            AnyTransport::Tcp(
                                TcpTransport::connect(listener.unwrap(), TcpConfig::new(PeerId(me), peers))
                                    .await
                                    .unwrap(),
                            )
                        }
                        Which::Shm => {
                            let peers = others.iter().map(|&p| PeerId(p)).collect();
                            AnyTransport::Shm(
                                ShmTransport::connect(ShmConfig::new(PeerId(me), peers, ns)).await.unwrap(),
                            )
                        }
                    };
                    let log: Rc<RefCell<Log>> = Rc::default();
                    let l = log.clone();
                    let group = StaticGroup::start(
                        transport,
                        NodeId(me),
                        view(n),
                        &limits,
                        Duration::from_secs(20),
                        move |d| {
                            l.borrow_mut().push((
                                d.sender.0,
                                d.index,
                                d.version.expect("ordered").seq(),
                                d.payload.to_vec(),
                            ));
                        },
                    )
                    .await
                    .expect("group starts");
                    for k in 0..per_sender {
                        let len = 1 + (k as usize * 7) % 300;
                        group
                            .send(SHARD, len, |b| {
                                b.fill(me as u8);
                                b[0] = k as u8;
                            })
                            .await
                            .expect("send");
                    }
                    let want = u64::from(n * per_sender);
                    let start = Instant::now();
                    while log.borrow().len() < want as usize {
                        assert!(
                            start.elapsed() < Duration::from_secs(30),
                            "member {me} delivered {} of {want}",
                            log.borrow().len()
                        );
                        derecho::runtime::time::sleep(Duration::from_millis(1)).await;
                    }
                    // Stay until every member has delivered everything (they still need our
                    // pushes of delivered_num to release their windows).
                    let settled = group.settle(SHARD, Duration::from_secs(30)).await.expect("every member delivers");
                    assert!(settled >= want, "settled at {settled} indices, below the {want} messages delivered");
                    group.close().await;
                    log.take()
                })
                .unwrap(),
        );
    }
    let logs: Vec<Log> = threads.into_iter().map(|t| t.join().expect("member thread")).collect();
    let _ = ShmTransport::remove_namespace(std::path::Path::new("/dev/shm"), &ns);
    logs
}

fn check(logs: &[Log], n: u32, per_sender: u32) {
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log.len(), (n * per_sender) as usize, "member {i} delivered {} messages", log.len());
        assert_eq!(log, &logs[0], "member {i} delivered a different sequence than member 0");
    }
    // Versions strictly increase; each sender's messages arrive in its order with intact bytes.
    let seqs: Vec<u64> = logs[0].iter().map(|d| d.2).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "versions not increasing");
    for s in 0..n {
        let mine: Vec<&(u32, u64, u64, Vec<u8>)> = logs[0].iter().filter(|d| d.0 == s).collect();
        // Indices count nulls too, so data indices increase with gaps; the payload's own counter
        // is contiguous.
        assert!(mine.windows(2).all(|w| w[0].1 < w[1].1), "sender {s}: indices not increasing");
        for (k, d) in mine.iter().enumerate() {
            assert_eq!(d.3.len(), 1 + (k * 7) % 300);
            assert_eq!(d.3[0], k as u8);
            assert!(d.3[1..].iter().all(|&b| b == s as u8), "sender {s} message {k} corrupted");
        }
    }
}

#[test]
fn tcp_three_members_deliver_the_same_order() {
    check(&run(Which::Tcp, 3, 300), 3, 300);
}

#[test]
fn shm_three_members_deliver_the_same_order() {
    check(&run(Which::Shm, 3, 300), 3, 300);
}
