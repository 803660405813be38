//! Bounded single-producer single-consumer channels between executors.
//!
//! Cores talk through explicit channels, never through shared locks. Sending into a channel whose
//! receiver sits on a parked executor wakes that executor (through its waker, which writes the
//! executor's eventfd).

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use futures::task::AtomicWaker;

struct Chan<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// Next slot to read; written only by the receiver.
    head: AtomicUsize,
    /// Next slot to write; written only by the sender.
    tail: AtomicUsize,
    rx_waker: AtomicWaker,
    tx_waker: AtomicWaker,
    tx_closed: AtomicBool,
    rx_closed: AtomicBool,
}

// SAFETY: each slot is accessed by one side at a time, handed over with acquire/release on
// `head`/`tail`; values of `T` move between threads, so `T: Send` is required.
unsafe impl<T: Send> Sync for Chan<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Chan<T> {}

impl<T> Drop for Chan<T> {
    fn drop(&mut self) {
        let (head, tail) = (*self.head.get_mut(), *self.tail.get_mut());
        for i in head..tail {
            // SAFETY: slots in `head..tail` hold initialised values nobody else will read.
            unsafe { self.slots[i % self.slots.len()].get_mut().assume_init_drop() };
        }
    }
}

/// The sending half. Moves to the producer's thread; not `Sync`, so only one thread at a time
/// can send (the channel has a single producer).
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

/// The receiving half. Moves to the consumer's thread; not `Sync` (a single consumer).
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("capacity", &self.chan.slots.len()).finish()
    }
}
impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("capacity", &self.chan.slots.len()).finish()
    }
}

/// The receiver was dropped; the value is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the receiving side of the channel is closed")]
pub struct Closed<T>(pub T);

/// Why [`Sender::try_send`] did not send.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The channel is full.
    #[error("the channel is full")]
    Full(T),
    /// The receiver was dropped.
    #[error("the receiving side of the channel is closed")]
    Closed(T),
}

/// A channel holding at most `capacity` values.
///
/// Each half belongs to one thread at a time: a shared `&Sender` cannot cross threads.
///
/// ```compile_fail
/// let (tx, _rx) = derecho_runtime::channel::spsc::<u8>(1);
/// let tx = &tx;
/// std::thread::scope(|s| {
///     s.spawn(move || tx.try_send(1));
/// });
/// ```
///
/// # Panics
///
/// If `capacity` is zero.
///
/// # Examples
///
/// ```
/// use derecho_runtime::{Builder, channel};
/// let (tx, mut rx) = channel::spsc::<u32>(16);
/// let producer = Builder::new().spawn_thread(move || async move {
///     for i in 0..100 {
///         tx.send(i).await.unwrap();
///     }
/// })?;
/// let ex = Builder::new().build()?;
/// let sum = ex.block_on(async move {
///     let mut sum = 0;
///     while let Some(v) = rx.recv().await {
///         sum += v;
///     }
///     sum
/// });
/// producer.join()?;
/// assert_eq!(sum, 4950);
/// # Ok::<(), derecho_runtime::RuntimeError>(())
/// ```
pub fn spsc<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "a channel needs room for one value");
    let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let chan = Arc::new(Chan {
        slots,
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        rx_waker: AtomicWaker::new(),
        tx_waker: AtomicWaker::new(),
        tx_closed: AtomicBool::new(false),
        rx_closed: AtomicBool::new(false),
    });
    (Sender { chan: chan.clone(), _not_sync: PhantomData }, Receiver { chan, _not_sync: PhantomData })
}

impl<T: Send> Sender<T> {
    /// Sends without waiting.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with the value.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let c = &*self.chan;
        if c.rx_closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(value));
        }
        let tail = c.tail.load(Ordering::Relaxed);
        if tail - c.head.load(Ordering::Acquire) == c.slots.len() {
            return Err(TrySendError::Full(value));
        }
        // SAFETY: the slot at `tail` is free (checked against `head`) and only the sender writes.
        unsafe { (*c.slots[tail % c.slots.len()].get()).write(value) };
        c.tail.store(tail + 1, Ordering::Release);
        c.rx_waker.wake();
        Ok(())
    }

    /// Sends, waiting while the channel is full.
    ///
    /// # Errors
    ///
    /// [`Closed`] with the value if the receiver was dropped.
    pub async fn send(&self, value: T) -> Result<(), Closed<T>> {
        let mut value = Some(value);
        poll_fn(|cx| {
            let v = value.take().expect("send polled after completion");
            match self.try_send(v) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(TrySendError::Closed(v)) => Poll::Ready(Err(Closed(v))),
                Err(TrySendError::Full(v)) => {
                    self.chan.tx_waker.register(cx.waker());
                    match self.try_send(v) {
                        Ok(()) => Poll::Ready(Ok(())),
                        Err(TrySendError::Closed(v)) => Poll::Ready(Err(Closed(v))),
                        Err(TrySendError::Full(v)) => {
                            value = Some(v);
                            Poll::Pending
                        }
                    }
                }
            }
        })
        .await
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.chan.tx_closed.store(true, Ordering::Release);
        self.chan.rx_waker.wake();
    }
}

impl<T: Send> Receiver<T> {
    /// Receives without waiting; `None` when empty.
    pub fn try_recv(&mut self) -> Option<T> {
        let c = &*self.chan;
        let head = c.head.load(Ordering::Relaxed);
        if head == c.tail.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: the slot at `head` was initialised by the sender (published by the acquire
        // load of `tail`) and only the receiver reads it.
        let value = unsafe { (*c.slots[head % c.slots.len()].get()).assume_init_read() };
        c.head.store(head + 1, Ordering::Release);
        c.tx_waker.wake();
        Some(value)
    }

    /// Receives, waiting while the channel is empty; `None` once the sender is dropped and every
    /// value has been received.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            if let Some(v) = self.try_recv() {
                return Poll::Ready(Some(v));
            }
            self.chan.rx_waker.register(cx.waker());
            if let Some(v) = self.try_recv() {
                return Poll::Ready(Some(v));
            }
            if self.chan.tx_closed.load(Ordering::Acquire) {
                // A last value may have been published just before the close.
                return Poll::Ready(self.try_recv());
            }
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.rx_closed.store(true, Ordering::Release);
        self.chan.tx_waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Builder;
    use std::time::Duration;

    #[test]
    fn fifo_across_parked_executors() {
        // Both executors park (spin budget 0), so every hand-over needs a cross-thread wake.
        let (tx, mut rx) = spsc::<u64>(4);
        let n = 10_000u64;
        let producer = Builder::new()
            .spawn_thread(move || async move {
                for i in 0..n {
                    tx.send(i).await.unwrap();
                }
            })
            .unwrap();
        let ex = Builder::new().build().unwrap();
        let got = ex.block_on(async move {
            let mut expect = 0;
            while let Some(v) = rx.recv().await {
                assert_eq!(v, expect, "out of order");
                expect += 1;
            }
            expect
        });
        producer.join().unwrap();
        assert_eq!(got, n);
    }

    #[test]
    fn halves_are_send_but_not_sync() {
        fn is_send<T: Send>() {}
        is_send::<Sender<u8>>();
        is_send::<Receiver<u8>>();
        // Not Sync: checked at compile time by the absence of this impl; a doctest below shows
        // `&Sender` cannot cross threads.
    }

    #[test]
    fn try_send_reports_full_and_closed() {
        let (tx, rx) = spsc::<u8>(1);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        drop(rx);
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[test]
    fn values_left_in_a_dropped_channel_are_dropped() {
        let value = Arc::new(());
        let (tx, rx) = spsc(2);
        tx.try_send(value.clone()).unwrap();
        drop((tx, rx));
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn recv_wakes_on_sender_drop() {
        let (tx, mut rx) = spsc::<u8>(1);
        let t = Builder::new()
            .spawn_thread(move || async move {
                crate::time::sleep(Duration::from_millis(5)).await;
                drop(tx);
            })
            .unwrap();
        let ex = Builder::new().build().unwrap();
        assert_eq!(ex.block_on(rx.recv()), None);
        t.join().unwrap();
    }
}
