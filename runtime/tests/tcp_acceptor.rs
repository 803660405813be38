//! The TCP acceptor that routes connections by group tag: several transports (one per view of a
//! membership driver) on one listener, connections parked until their transport exists, and
//! peers that never come reported as failed instead of failing the connect.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::transport::tcp::{TcpAcceptor, TcpConfig, TcpTransport};
use derecho_runtime::transport::{PeerFailure, PeerId, Transport, TransportEvent, TransportLimits};
use derecho_runtime::{Builder, spawn, time};

const A: PeerId = PeerId(0);
const B: PeerId = PeerId(1);

fn limits(connect: Duration) -> TransportLimits {
    TransportLimits { connect_timeout: connect, ..TransportLimits::default() }
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.local_addr();
    (l, a)
}

fn config(me: PeerId, peers: Vec<(PeerId, SocketAddr)>, tag: u32, connect: Duration) -> TcpConfig {
    TcpConfig { group_tag: tag, limits: limits(connect), ..TcpConfig::new(me, peers) }
}

async fn next_frame(t: &TcpTransport) -> (PeerId, Vec<u8>) {
    match time::timeout(Duration::from_secs(10), t.next_event()).await {
        Ok(TransportEvent::Frame { from, frame }) => (from, frame.to_vec()),
        Ok(other) => panic!("expected a frame, got {other:?}"),
        Err(_) => panic!("no frame within 10 s"),
    }
}

#[test]
fn two_tags_share_one_listener_and_an_early_connection_waits() {
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let (la, addr_a) = listener();
        let acceptor = TcpAcceptor::new(la, A, &limits(Duration::from_secs(10)), 16, Duration::from_secs(10));
        // B dials A for tag 10 and tag 11 (two views); A claims tag 10 only at first.
        let b10 = spawn(TcpTransport::connect(listener().0, config(B, vec![(A, addr_a)], 10, Duration::from_secs(10))));
        let b11 = spawn(TcpTransport::connect(listener().0, config(B, vec![(A, addr_a)], 11, Duration::from_secs(10))));
        let a10 = TcpTransport::connect_via(
            &acceptor,
            config(A, vec![(B, "127.0.0.1:1".parse().unwrap())], 10, Duration::from_secs(10)),
            false,
        )
        .await
        .expect("tag 10 connects");
        let b10 = b10.await.expect("B's tag 10");
        // B's tag-11 connection was answered and waits, parked, for A's transport of tag 11:
        // B can already send on it.
        let b11 = b11.await.expect("B's tag 11 connects before A has a transport for it");
        assert_eq!(acceptor.parked(), 1);
        b11.send_frame(A, b"eleven".to_vec().into()).await.unwrap();
        b10.send_frame(A, b"ten".to_vec().into()).await.unwrap();
        assert_eq!(next_frame(&a10).await, (B, b"ten".to_vec()));
        let a11 = TcpTransport::connect_via(
            &acceptor,
            config(A, vec![(B, "127.0.0.1:1".parse().unwrap())], 11, Duration::from_secs(10)),
            false,
        )
        .await
        .expect("tag 11 claims the parked connection");
        assert_eq!(acceptor.parked(), 0);
        assert_eq!(next_frame(&a11).await, (B, b"eleven".to_vec()), "the frame sent early waited in the socket");
        a10.close(Duration::from_millis(100)).await;
        a11.close(Duration::from_millis(100)).await;
        b10.close(Duration::from_millis(100)).await;
        b11.close(Duration::from_millis(100)).await;
    });
}

#[test]
fn a_peer_that_never_comes_is_reported_not_fatal() {
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let (la, addr_a) = listener();
        let acceptor = TcpAcceptor::new(la, A, &limits(Duration::from_millis(300)), 16, Duration::from_secs(10));
        let ghost = PeerId(2);
        let b = spawn(TcpTransport::connect(listener().0, config(B, vec![(A, addr_a)], 5, Duration::from_secs(10))));
        let peers = vec![(B, "127.0.0.1:1".parse().unwrap()), (ghost, "127.0.0.1:1".parse().unwrap())];
        let started = Instant::now();
        let strict =
            TcpTransport::connect_via(&acceptor, config(A, peers.clone(), 6, Duration::from_millis(300)), false).await;
        assert!(strict.is_err(), "without missing_ok a missing peer fails the connect");
        let a = TcpTransport::connect_via(&acceptor, config(A, peers, 5, Duration::from_millis(300)), true)
            .await
            .expect("missing_ok: the transport runs with the peers that came");
        assert!(started.elapsed() < Duration::from_secs(5));
        let b = b.await.expect("B connects");
        match time::timeout(Duration::from_secs(5), a.next_event()).await {
            Ok(TransportEvent::PeerFailed { peer, reason: PeerFailure::Silent(_) }) => assert_eq!(peer, ghost),
            other => panic!("expected the ghost reported as failed, got {other:?}"),
        }
        b.send_frame(A, b"hi".to_vec().into()).await.unwrap();
        assert_eq!(next_frame(&a).await, (B, b"hi".to_vec()));
        a.close(Duration::from_millis(100)).await;
        b.close(Duration::from_millis(100)).await;
    });
}

#[test]
fn one_shot_messages_arrive_whole_and_bad_ones_are_dropped() {
    use derecho_runtime::transport::tcp::send_message;
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let (l, addr) = listener();
        let acceptor = TcpAcceptor::new(l, A, &TransportLimits::default(), 8, Duration::from_secs(2));
        acceptor.accept_messages(77, 1 << 20);
        // A connection that never says hello does not hold up the others.
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        // A message larger than the receive buffer arrives whole, with its sender's id.
        let big: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        send_message(B, addr, 77, &big, Duration::from_secs(5), None).await.expect("sent");
        let (from, body) = time::timeout(Duration::from_secs(5), acceptor.next_message()).await.expect("a message");
        assert_eq!((from, body.len()), (B, big.len()));
        assert_eq!(body, big);
        // Longer than the receiver's limit: the receiver drops it, the sender hears the close
        // before it could send everything or right after, and nothing is handed out.
        let huge = vec![0u8; (1 << 20) + 1];
        let _ = send_message(B, addr, 77, &huge, Duration::from_secs(5), None).await;
        // An empty message arrives, and is the next one handed out.
        send_message(PeerId(2), addr, 77, &[], Duration::from_secs(5), None).await.expect("empty sent");
        let (from, body) = time::timeout(Duration::from_secs(5), acceptor.next_message()).await.expect("a message");
        assert_eq!((from, body.len()), (PeerId(2), 0), "the oversized message was handed out");
        // Nobody listening: an error within the bound, not a hang.
        let (dead, dead_addr) = listener();
        drop(dead);
        let t0 = Instant::now();
        assert!(send_message(B, dead_addr, 77, b"x", Duration::from_millis(300), None).await.is_err());
        assert!(t0.elapsed() < Duration::from_secs(3));
    });
}

#[test]
fn one_shot_messages_from_one_source_are_rate_limited() {
    use derecho_runtime::transport::tcp::send_message;
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let (l, addr) = listener();
        let acceptor = TcpAcceptor::new(l, A, &TransportLimits::default(), 64, Duration::from_secs(2));
        acceptor.accept_messages(77, 1 << 10);
        // Three at once, then (practically) none.
        acceptor.message_rate(0.001, 3.0);
        let mut sent = 0;
        for i in 0..10u8 {
            if send_message(B, addr, 77, &[i], Duration::from_secs(2), None).await.is_ok() {
                sent += 1;
            }
        }
        assert_eq!(sent, 3, "messages beyond the burst were read");
        for i in 0..3u8 {
            let (_, body) = time::timeout(Duration::from_secs(2), acceptor.next_message()).await.expect("a message");
            assert_eq!(body, vec![i]);
        }
        assert!(
            time::timeout(Duration::from_millis(200), acceptor.next_message()).await.is_err(),
            "a message beyond the rate was handed out"
        );
    });
}
