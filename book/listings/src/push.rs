//! Pushes: one-sided copies of a byte range of a registered region into a peer's replica.

use std::time::{Duration, Instant};

use derecho::runtime::yield_now;
use derecho::{PeerId, RegionId, Transport};

use crate::Error;

// ANCHOR: row
/// The region every peer registers: one row, a counter and the data it covers.
pub const ROW: RegionId = RegionId(1);
/// The counter: which version of the data the row holds. Bytes `0..8`.
pub const COUNTER: usize = 0;
/// The data: seven words, each holding the version that wrote it. Bytes `8..64`.
pub const DATA: std::ops::Range<usize> = 8..64;
/// The length of the row.
pub const ROW_LEN: usize = 64;
// ANCHOR_END: row

// ANCHOR: writer
/// Writes versions `1..=versions` of this side's row, pushing the data and then the counter to
/// `to`. Pushes to one peer are applied in the order they were issued, so the peer never sees a
/// counter before the data it covers.
///
/// # Errors
///
/// [`Error::Transport`]: the row is not registered here or at the peer, or the peer failed.
pub async fn write_rows(t: &impl Transport, to: PeerId, versions: u64) -> Result<(), Error> {
    let row = t.region(ROW).ok_or(derecho::TransportError::UnknownRegion(ROW))?;
    for version in 1..=versions {
        for word in DATA.step_by(8) {
            row.store_u64(word, version);
        }
        t.push(to, ROW, DATA)?;
        row.store_u64(COUNTER, version);
        t.push(to, ROW, COUNTER..COUNTER + 8)?;
        // Let the executor run its other tasks (and, here, the reader) now and then.
        if version % 16 == 0 {
            yield_now().await;
        }
    }
    Ok(())
}
// ANCHOR_END: writer

// ANCHOR: reader
/// Polls this side's replica of the peer's row until its counter reaches `versions`, checking on
/// every poll that the data is at least as new as the counter read before it. Nothing announces
/// a push: the reader looks, as Derecho's SST predicates do.
///
/// # Errors
///
/// [`Error::Unexpected`] if the data is older than its counter, [`Error::Timeout`] if the counter
/// does not reach `versions` within `within`.
pub async fn read_rows(t: &impl Transport, versions: u64, within: Duration) -> Result<(), Error> {
    let row = t.region(ROW).ok_or(derecho::TransportError::UnknownRegion(ROW))?;
    let deadline = Instant::now() + within;
    loop {
        // Acquire: everything pushed before this counter value is visible after this load.
        let counter = row.load_u64(COUNTER);
        for word in DATA.step_by(8) {
            let written_by = row.load_u64(word);
            if written_by < counter {
                return Err(Error::Unexpected(format!("data of version {written_by} under counter {counter}")));
            }
        }
        if counter == versions {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(within));
        }
        yield_now().await;
    }
}
// ANCHOR_END: reader

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{BOTH, with_pair};

    #[test]
    fn the_counter_never_overtakes_its_data() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                // Every peer registers the region before anyone pushes to it.
                a.register_region(ROW, ROW_LEN).unwrap();
                b.register_region(ROW, ROW_LEN).unwrap();
                let reader = derecho::spawn(async move { read_rows(&b, 5000, Duration::from_secs(10)).await });
                write_rows(&a, PeerId(1), 5000).await.unwrap();
                reader.await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            });
        }
    }

    #[test]
    fn pushing_an_unregistered_region_is_an_error() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                let _alive = &b;
                let err = write_rows(&a, PeerId(1), 1).await.unwrap_err();
                assert!(matches!(err, Error::Transport(derecho::TransportError::UnknownRegion(ROW))), "{err}");
            });
        }
    }
}
