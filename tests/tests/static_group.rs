//! The static-group driver on real transports: members on their own executor threads (one
//! process), every member sending, every member delivering the same messages in the same order.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use derecho::driver::{GroupConfig, StaticGroup, connect_with};
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
                    group.settle(SHARD, Duration::from_secs(30)).await.expect("every member delivers");
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

/// One member of a group that `two_groups_side_by_side_share_executors` runs: connect as the
/// configuration says, send 200 two-byte messages tagged `tag`, wait for everybody's, settle.
async fn tagged_member(config: GroupConfig, listener: Option<TcpListener>, tag: u8) -> Vec<(u32, u8, u8)> {
    let log: Rc<RefCell<Vec<(u32, u8, u8)>>> = Rc::default();
    let waker: Rc<RefCell<Option<Waker>>> = Rc::default();
    let (l, w) = (log.clone(), waker.clone());
    let transport = connect_with(&config, listener).await.expect("transport connects");
    let group = StaticGroup::start(transport, config.me, config.view.clone(), &config.limits, config.start_timeout, {
        move |d| {
            l.borrow_mut().push((d.sender.0, d.payload[0], d.payload[1]));
            if let Some(w) = w.borrow_mut().take() {
                w.wake();
            }
        }
    })
    .await
    .expect("group starts");
    for k in 0..200u8 {
        group.send(SHARD, 2, |b| b.copy_from_slice(&[tag, k])).await.expect("send");
    }
    let want = 200 * config.view.members.len();
    let all = std::future::poll_fn(|cx| {
        if log.borrow().len() >= want {
            return std::task::Poll::Ready(());
        }
        *waker.borrow_mut() = Some(cx.waker().clone());
        std::task::Poll::Pending
    });
    derecho::runtime::time::timeout(Duration::from_secs(30), all).await.unwrap_or_else(|_| {
        panic!("group {} member {}: {} of {want} delivered", tag as char, config.me, log.borrow().len())
    });
    group.settle(SHARD, Duration::from_secs(30)).await.expect("every member delivers");
    group.close().await;
    log.take()
}

/// Two groups side by side in one process, with no state shared between them: each of two
/// executor threads hosts a member of a TCP group and a member of a shared-memory group, both
/// configured from TOML, the TCP group with mutual TLS (`[tls] dir`, certificates of a throw-away
/// authority). Each group delivers its own messages only, in one order.
#[test]
fn two_groups_side_by_side_share_executors() {
    let limits = "[limits]\nwindow_len = 16\npayload_len_max = 64\nring_len = 4096\n";
    let listeners: Vec<TcpListener> =
        (0..2).map(|_| TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let certs = std::env::temp_dir().join(format!("sg{}-side-tls", std::process::id()));
    let ca = derecho::runtime::tls::DevCa::new().expect("an authority");
    ca.write_nodes(&certs, 0..2).expect("certificates");
    let tcp = format!(
        "me = 0\ntransport = \"tcp\"\n[tls]\ndir = {:?}\n{limits}[[members]]\nid = 0\naddress = \"{}\"\n[[members]]\nid = 1\naddress = \"{}\"\n",
        certs.display().to_string(),
        listeners[0].local_addr(),
        listeners[1].local_addr()
    );
    let ns = format!("sg{}-side", std::process::id());
    let shm = format!(
        "me = 0\ntransport = \"shm\"\nshm_namespace = \"{ns}\"\n{limits}[[members]]\nid = 0\n[[members]]\nid = 1\n"
    );
    let threads: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(me, listener)| {
            let (tcp, shm) = (tcp.clone(), shm.clone());
            Builder::new()
                .spawn_thread(move || async move {
                    let me = [format!("me={me}")];
                    let tcp = GroupConfig::from_toml(&tcp, std::iter::empty(), &me).expect("valid TCP config");
                    assert!(tcp.tls.is_some(), "the TCP group runs TLS");
                    let shm = GroupConfig::from_toml(&shm, std::iter::empty(), &me).expect("valid shm config");
                    let t = derecho::spawn(tagged_member(tcp, Some(listener), b'T'));
                    let s = tagged_member(shm, None, b'S').await;
                    (t.await, s)
                })
                .unwrap()
        })
        .collect();
    let logs: Vec<_> = threads.into_iter().map(|t| t.join().expect("member thread")).collect();
    let _ = ShmTransport::remove_namespace(std::path::Path::new("/dev/shm"), &ns);
    let _ = std::fs::remove_dir_all(&certs);
    for (group, tag, pick) in [("TCP", b'T', 0), ("shm", b'S', 1)] {
        let member_logs: Vec<&Vec<(u32, u8, u8)>> = logs.iter().map(|(t, s)| if pick == 0 { t } else { s }).collect();
        assert_eq!(member_logs[0].len(), 400, "{group} group delivered {} messages", member_logs[0].len());
        assert_eq!(member_logs[0], member_logs[1], "{group} group members delivered different sequences");
        assert!(member_logs[0].iter().all(|&(_, t, _)| t == tag), "{group} group delivered another group's message");
        for sender in 0..2 {
            let ks: Vec<u8> = member_logs[0].iter().filter(|d| d.0 == sender).map(|d| d.2).collect();
            assert_eq!(ks, (0..200).collect::<Vec<u8>>(), "{group} group: sender {sender} out of order");
        }
    }
}
