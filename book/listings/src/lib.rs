//! The code listings of the derecho book, compiled and tested.
//!
//! Every code block in the book comes from a file of this crate (or of `examples/`), included by
//! mdBook between `// ANCHOR: name` and `// ANCHOR_END: name` markers. The tests in each module
//! run the listings, with both peers in one process, so a listing that stops compiling or stops
//! working fails `cargo test --workspace`.
//!
//! # Layout
//!
//! * [`executor`]: one pinned executor per core; spinning and parking (chapter "Running the
//!   transports").
//! * [`pair`]: connecting two peers in one process, over TCP and over shared memory.
//! * [`frames`]: sending frames and receiving them in order.
//! * [`push`]: registering a region, pushing data and then a counter, polling the replica.
//! * [`failure`]: how a failed peer is reported.

use std::time::Duration;

use derecho::{PeerFailure, PeerId, TransportError};

pub mod executor;
pub mod failure;
pub mod frames;
pub mod pair;
pub mod push;

/// How the listings fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A transport operation failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The other peer failed.
    #[error("{peer} failed: {reason}")]
    PeerFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: PeerFailure,
    },
    /// Nothing happened in time.
    #[error("nothing arrived within {0:?}")]
    Timeout(Duration),
    /// Something arrived that the listing did not expect.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

#[cfg(test)]
pub(crate) mod testing {
    //! Runs a listing with two connected peers on one executor.

    use std::future::Future;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use derecho::runtime::time::timeout;
    use derecho::{AnyTransport, Builder};

    use crate::pair::{shm_pair, tcp_pair};

    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Kind {
        Tcp,
        Shm,
    }

    pub(crate) const BOTH: [Kind; 2] = [Kind::Tcp, Kind::Shm];

    /// A shared-memory namespace no other test (or run) uses.
    pub(crate) fn unique_namespace() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!("book-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Connects peer 0 and peer 1 over `kind` on one executor and runs `f` with them, failing
    /// (not hanging) after 20 s.
    pub(crate) fn with_pair<F, Fut>(kind: Kind, f: F)
    where
        F: FnOnce(AnyTransport, AnyTransport) -> Fut,
        Fut: Future<Output = ()>,
    {
        let executor = Builder::new().build().expect("an executor");
        executor.block_on(async {
            let (a, b) = match kind {
                Kind::Tcp => tcp_pair().await.map(|(a, b)| (AnyTransport::Tcp(a), AnyTransport::Tcp(b))),
                Kind::Shm => {
                    shm_pair(&unique_namespace()).await.map(|(a, b)| (AnyTransport::Shm(a), AnyTransport::Shm(b)))
                }
            }
            .unwrap_or_else(|e| panic!("{kind:?} pair: {e}"));
            timeout(Duration::from_secs(20), f(a, b)).await.unwrap_or_else(|_| panic!("{kind:?}: timed out"));
        });
    }
}
