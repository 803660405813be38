//! TLS on the runtime's TCP streams: mutual authentication against one authority, names bound
//! to node ids, and bytes that arrive whole and in order through every receive path.

use std::time::Duration;

use derecho_runtime::buf::AlignedBuf;
use derecho_runtime::net::{TcpListener, TcpStream};
use derecho_runtime::tls::{DevCa, node_name};
use derecho_runtime::{Builder, spawn, time};

/// Receives exactly `n` bytes (using the non-blocking path when `spin`).
async fn recv_exactly(s: &TcpStream, n: usize, spin: bool) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    let mut buf = AlignedBuf::zeroed(16 << 10);
    while got.len() < n {
        if spin {
            let cap = buf.capacity();
            match s.try_recv_now(&mut buf, 0..cap).expect("try_recv_now") {
                Some(0) => panic!("closed after {} of {n} bytes", got.len()),
                Some(k) => {
                    got.extend_from_slice(&buf.spare_full()[..k]);
                    continue;
                }
                None => time::sleep(Duration::from_micros(50)).await,
            }
            continue;
        }
        let (r, b) = s.recv(buf, 0).await;
        buf = b;
        let k = r.expect("recv");
        assert!(k > 0, "closed after {} of {n} bytes", got.len());
        got.extend_from_slice(&buf.spare_full()[..k]);
    }
    got
}

#[test]
fn both_ends_authenticate_and_bytes_arrive_whole_in_order() {
    let ca = DevCa::new().unwrap();
    let server_id = ca.identity(&node_name(1)).unwrap();
    let client_id = ca.identity(&node_name(2)).unwrap();
    Builder::new().build().unwrap().block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let server = spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let s = s.accept_tls(&server_id).await.expect("server handshake");
            assert!(s.is_tls());
            assert!(s.peer_is_node(2) && !s.peer_is_node(3), "the client's certificate names node 2 only");
            assert_eq!(s.peer_identity().as_deref(), Some("node-2.derecho"));
            let big = recv_exactly(&s, 1 << 20, false).await;
            assert!(big.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "bytes changed on the way");
            let small = recv_exactly(&s, 3, true).await;
            assert_eq!(small, b"end");
            let (r, _) = s.send_vectored(vec![b"he".to_vec(), b"llo".to_vec()], 1).await;
            assert_eq!(r.unwrap(), 4);
        });
        let c = TcpStream::connect(addr).await.unwrap().connect_tls(&client_id).await.expect("client handshake");
        assert!(c.peer_is_node(1) && !c.peer_is_node(2));
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        c.send_all(big).await.unwrap();
        let (r, _) = c.send_one(b"xend".to_vec(), 1).await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(recv_exactly(&c, 4, false).await, b"ello");
        server.await;
    });
}

#[test]
fn a_peer_of_another_authority_or_without_tls_is_refused() {
    let ca = DevCa::new().unwrap();
    let other = DevCa::new().unwrap();
    let server_id = ca.identity(&node_name(1)).unwrap();
    let stranger = other.identity(&node_name(2)).unwrap();
    Builder::new().build().unwrap().block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let server = spawn(async move {
            let mut reasons = Vec::new();
            for _ in 0..3 {
                let (s, _) = l.accept().await.unwrap();
                let r = time::timeout(Duration::from_secs(5), s.accept_tls(&server_id)).await.expect("not a hang");
                reasons.push(r.expect_err("a handshake that must fail").to_string());
            }
            reasons
        });
        // A certificate from another authority: the client refuses the server's too.
        let r = TcpStream::connect(addr).await.unwrap().connect_tls(&stranger).await;
        assert!(r.is_err(), "a client of another authority got through");
        // Plaintext bytes where a handshake should be.
        let plain = TcpStream::connect(addr).await.unwrap();
        plain.send_all(vec![0x16u8, 3, 3, 0, 5, 1, 2, 3, 4, 5, 9, 9, 9]).await.unwrap();
        plain.shutdown_write();
        // 300 KiB of handshake records that never make a handshake: an error, not a panic or a
        // buffer that grows.
        let flood = TcpStream::connect(addr).await.unwrap();
        let mut records = Vec::new();
        while records.len() < 300 << 10 {
            records.extend_from_slice(&[0x16, 3, 3, 0x40, 0x00]);
            records.extend(std::iter::repeat_n(0u8, 0x4000));
        }
        let _ = flood.send_all(records).await;
        let reasons = server.await;
        assert_eq!(reasons.len(), 3);
        for r in &reasons {
            assert!(!r.is_empty());
        }
    });
}

/// A session ends cleanly only with a close_notify: a bare FIN (which anyone on the path can
/// send) reads as an error, through the blocking and the non-blocking receive alike.
#[test]
fn only_a_close_notify_ends_a_session_cleanly() {
    let ca = DevCa::new().unwrap();
    let server_id = ca.identity(&node_name(1)).unwrap();
    let client_id = ca.identity(&node_name(2)).unwrap();
    Builder::new().build().unwrap().block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let server = spawn(async move {
            let mut outcomes = Vec::new();
            for spin in [false, true, false] {
                let (s, _) = l.accept().await.unwrap();
                let s = s.accept_tls(&server_id).await.expect("server handshake");
                assert_eq!(recv_exactly(&s, 5, spin).await, b"hello");
                let r = if spin {
                    let mut buf = AlignedBuf::zeroed(64);
                    loop {
                        match s.try_recv_now(&mut buf, 0..64) {
                            Ok(None) => time::sleep(Duration::from_micros(50)).await,
                            Ok(Some(n)) => break Ok(n),
                            Err(e) => break Err(e),
                        }
                    }
                } else {
                    s.recv(AlignedBuf::zeroed(64), 0).await.0
                };
                outcomes.push(r.map_err(|e| e.kind()));
            }
            outcomes
        });
        // First and second: a bare FIN after the bytes. Third: a close_notify, then the FIN.
        for clean in [false, false, true] {
            let c = TcpStream::connect(addr).await.unwrap().connect_tls(&client_id).await.expect("client handshake");
            c.send_all(b"hello".to_vec()).await.unwrap();
            if clean {
                c.close_write().await.expect("close_notify sent");
            } else {
                c.shutdown_write();
            }
            // Held open until the server has read to the end.
            let _ = time::timeout(Duration::from_secs(5), c.recv(AlignedBuf::zeroed(64), 0)).await;
        }
        let outcomes = server.await;
        let cut = Err(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(outcomes, vec![cut, cut, Ok(0)], "blocking FIN, non-blocking FIN, close_notify");
    });
}
