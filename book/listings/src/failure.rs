//! Failure: how a transport reports a peer that is gone.

use std::time::{Duration, Instant};

use derecho::runtime::time::timeout;
use derecho::{PeerFailure, PeerId, Transport, TransportEvent};

use crate::Error;

// ANCHOR: wait_for_failure
/// Waits until a peer is reported failed, skipping any frames still arriving from it, and
/// returns which peer and why. Each failed peer is reported exactly once.
///
/// # Errors
///
/// [`Error::Timeout`] if no peer fails within `within`.
pub async fn wait_for_failure(t: &impl Transport, within: Duration) -> Result<(PeerId, PeerFailure), Error> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, t.next_event()).await {
            Ok(TransportEvent::PeerFailed { peer, reason }) => return Ok((peer, reason)),
            Ok(TransportEvent::Frame { .. }) => continue,
            Err(_) => return Err(Error::Timeout(within)),
        }
    }
}
// ANCHOR_END: wait_for_failure

#[cfg(test)]
mod tests {
    use derecho::{AnyTransport, TransportError};

    use super::*;
    use crate::testing::{BOTH, with_pair};

    #[test]
    fn a_closed_peer_is_reported_closed_and_sends_to_it_fail() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                a.send_frame(PeerId(1), b"last words".into()).await.unwrap();
                close(&a).await;
                let (peer, reason) = wait_for_failure(&b, Duration::from_secs(5)).await.unwrap();
                assert_eq!(peer, PeerId(0));
                assert!(matches!(reason, PeerFailure::Closed), "{kind:?}: {reason}");
                let err = b.send_frame(PeerId(0), b"hello?".into()).await.unwrap_err();
                assert!(matches!(err, TransportError::PeerFailed(PeerId(0))), "{kind:?}: {err}");
            });
        }
    }

    async fn close(t: &AnyTransport) {
        t.close(Duration::from_secs(1)).await;
    }

    #[test]
    fn no_failure_is_a_timeout() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                // Peer 0 stays open (an async block captures only what it names; dropping `a`
                // would close it).
                let _alive = &a;
                let err = wait_for_failure(&b, Duration::from_millis(50)).await.unwrap_err();
                assert!(matches!(err, Error::Timeout(_)), "{kind:?}: {err}");
            });
        }
    }
}
