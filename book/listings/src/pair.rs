//! Two peers in one process: how tests (and this book's listings) connect a transport pair.
//!
//! Two processes connect the same way, each running one side; see `connect` in the `ping`
//! example.

use std::net::{Ipv4Addr, SocketAddr};

use derecho::{PeerId, ShmConfig, ShmTransport, TcpConfig, TcpListener, TcpTransport, TransportError, spawn};

/// Loopback, on a port the kernel picks.
const LOOPBACK_ANY_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

// ANCHOR: tcp_pair
/// Connects peers 0 and 1 over TCP on loopback, both on the current executor.
///
/// # Errors
///
/// Binding a listener, or connecting (bounded by the default 30 s connect timeout).
pub async fn tcp_pair() -> Result<(TcpTransport, TcpTransport), TransportError> {
    let bind = || {
        TcpListener::bind(LOOPBACK_ANY_PORT)
            .map_err(|source| TransportError::Io { context: "bind a loopback listener".into(), source })
    };
    let (listener_0, listener_1) = (bind()?, bind()?);
    let config_0 = TcpConfig::new(PeerId(0), vec![(PeerId(1), listener_1.local_addr())]);
    let config_1 = TcpConfig::new(PeerId(1), vec![(PeerId(0), listener_0.local_addr())]);
    // Peer 0 accepts while peer 1 dials: the two connects must run at the same time.
    let peer_0 = spawn(TcpTransport::connect(listener_0, config_0));
    let peer_1 = TcpTransport::connect(listener_1, config_1).await?;
    Ok((peer_0.await?, peer_1))
}
// ANCHOR_END: tcp_pair

// ANCHOR: shm_pair
/// Connects peers 0 and 1 through shared-memory files named after `namespace`, both on the
/// current executor.
///
/// # Errors
///
/// An invalid namespace, files that cannot be created, or a connect timeout.
pub async fn shm_pair(namespace: &str) -> Result<(ShmTransport, ShmTransport), TransportError> {
    let peer_0 = spawn(ShmTransport::connect(ShmConfig::new(PeerId(0), vec![PeerId(1)], namespace)));
    let peer_1 = ShmTransport::connect(ShmConfig::new(PeerId(1), vec![PeerId(0)], namespace)).await?;
    Ok((peer_0.await?, peer_1))
}
// ANCHOR_END: shm_pair

#[cfg(test)]
mod tests {
    use derecho::Transport;

    use crate::testing::{BOTH, with_pair};

    #[test]
    fn pairs_connect_and_know_each_other() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                assert_eq!((a.me(), a.peers()), (derecho::PeerId(0), &[derecho::PeerId(1)][..]));
                assert_eq!((b.me(), b.peers()), (derecho::PeerId(1), &[derecho::PeerId(0)][..]));
            });
        }
    }
}
