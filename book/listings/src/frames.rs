//! Frames: ordered, length-delimited messages to one peer.

use std::time::Duration;

use derecho::runtime::time::timeout;
use derecho::{Frame, PeerId, Transport, TransportEvent};

use crate::Error;

// ANCHOR: next_frame
/// The next frame and its sender; a failed peer, or nothing within `within`, is an error.
///
/// # Errors
///
/// [`Error::PeerFailed`] or [`Error::Timeout`].
pub async fn next_frame(t: &impl Transport, within: Duration) -> Result<(PeerId, Frame), Error> {
    match timeout(within, t.next_event()).await {
        Ok(TransportEvent::Frame { from, frame }) => Ok((from, frame)),
        Ok(TransportEvent::PeerFailed { peer, reason }) => Err(Error::PeerFailed { peer, reason }),
        Err(_) => Err(Error::Timeout(within)),
    }
}
// ANCHOR_END: next_frame

// ANCHOR: numbered
/// Sends frames numbered `0..count` to `to`. `send_frame` returns once the frame is queued (or
/// written into the peer's ring); it waits only while the queue or ring is full.
///
/// # Errors
///
/// [`Error::Transport`]: the peer failed, or the frame is above the maximum length.
pub async fn send_numbered(t: &impl Transport, to: PeerId, count: u32) -> Result<(), Error> {
    for number in 0..count {
        t.send_frame(to, number.to_le_bytes().to_vec().into()).await?;
    }
    Ok(())
}

/// Receives `count` frames from `from` and checks that they are numbered `0..count`, in order.
///
/// # Errors
///
/// As [`next_frame`], or [`Error::Unexpected`] for a frame out of order.
pub async fn receive_numbered(t: &impl Transport, from: PeerId, count: u32) -> Result<(), Error> {
    for expected in 0..count {
        let (sender, frame) = next_frame(t, Duration::from_secs(5)).await?;
        let number = frame.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if sender != from || number != Some(expected) {
            return Err(Error::Unexpected(format!("frame {number:?} from {sender}, expected {expected} from {from}")));
        }
    }
    Ok(())
}
// ANCHOR_END: numbered

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{BOTH, with_pair};

    #[test]
    fn numbered_frames_arrive_in_order() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                let receiver = derecho::spawn(async move { receive_numbered(&b, PeerId(0), 1000).await });
                send_numbered(&a, PeerId(1), 1000).await.unwrap();
                receiver.await.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            });
        }
    }

    #[test]
    fn a_frame_out_of_order_is_reported() {
        for kind in BOTH {
            with_pair(kind, |a, b| async move {
                a.send_frame(PeerId(1), 5u32.to_le_bytes().to_vec().into()).await.unwrap();
                let err = receive_numbered(&b, PeerId(0), 1).await.unwrap_err();
                assert!(matches!(err, Error::Unexpected(_)), "{kind:?}: {err}");
            });
        }
    }
}
