//! Timers of the current executor.
//!
//! Deadlines live in a sorted map inside the executor; a parked executor sets its io_uring wait
//! timeout to the earliest one, so timers cost no system call of their own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::executor::{cancel_timer, register_timer};

/// A future that completes at a deadline. Created by [`sleep`] and [`sleep_until`].
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

/// Completes after `duration`.
///
/// # Examples
///
/// ```
/// # let ex = derecho_runtime::Builder::new().build()?;
/// use std::time::{Duration, Instant};
/// ex.block_on(async {
///     let start = Instant::now();
///     derecho_runtime::time::sleep(Duration::from_millis(5)).await;
///     assert!(start.elapsed() >= Duration::from_millis(5));
/// });
/// # Ok::<(), derecho_runtime::RuntimeError>(())
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, key: None }
}

impl Sleep {
    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline (re-arms the timer).
    pub fn reset(&mut self, deadline: Instant) {
        if let Some(key) = self.key.take() {
            cancel_timer(key);
        }
        self.deadline = deadline;
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                cancel_timer(key);
            }
            return Poll::Ready(());
        }
        let key = register_timer(self.deadline, cx.waker(), self.key);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            cancel_timer(key);
        }
    }
}

/// The deadline of a [`timeout`] passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Runs `future`, giving up after `duration`.
///
/// # Errors
///
/// [`Elapsed`] if the duration passed first; the future is dropped (and with it, any io_uring
/// operation it had in flight is cancelled).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed(duration)));
        }
        Poll::Pending
    })
    .await
}

/// A periodic timer that does not drift: ticks are due at `start + k * period`.
pub struct Interval {
    next: Instant,
    period: Duration,
    sleep: Sleep,
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interval").field("next", &self.next).field("period", &self.period).finish()
    }
}

/// A timer that ticks every `period`, the first tick one period from now.
///
/// # Panics
///
/// If `period` is zero.
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "an interval needs a non-zero period");
    let next = Instant::now() + period;
    Interval { next, period, sleep: sleep_until(next) }
}

impl Interval {
    /// Waits for the next tick. Ticks missed while the task was busy are skipped, not bunched.
    pub async fn tick(&mut self) -> Instant {
        (&mut self.sleep).await;
        let due = self.next;
        let now = Instant::now();
        self.next += self.period;
        if self.next <= now {
            let behind = now.duration_since(self.next).as_nanos() / self.period.as_nanos() + 1;
            self.next += self.period * behind as u32;
        }
        self.sleep.reset(self.next);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Builder;

    #[test]
    fn timeout_fires_and_passes() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let r = timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed(Duration::from_millis(5))));
            let r = timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(r, Ok(7));
        });
    }

    #[test]
    fn timers_fire_in_deadline_order() {
        let ex = Builder::new().build().unwrap();
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        ex.block_on(async {
            let mut handles = Vec::new();
            for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
                let order = order.clone();
                handles.push(crate::spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push(i);
                }));
            }
            for h in handles {
                h.await;
            }
        });
        assert_eq!(*order.borrow(), vec![1, 2, 0]);
    }

    #[test]
    fn dropped_sleep_leaves_no_timer() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            for _ in 0..100 {
                // Pending once, so the timeout's sleep is registered before it is dropped.
                let r = timeout(Duration::from_secs(100), crate::yield_now()).await;
                assert_eq!(r, Ok(()));
            }
            assert_eq!(crate::timers_pending(), 0, "a dropped timeout left its timer behind");
            let s = sleep(Duration::from_secs(100));
            let mut s = std::pin::pin!(s);
            assert!(futures::poll!(s.as_mut()).is_pending());
            assert_eq!(crate::timers_pending(), 1);
        });
    }

    #[test]
    fn interval_ticks_without_drift() {
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let start = Instant::now();
            let mut iv = interval(Duration::from_millis(2));
            let mut last = start;
            for _ in 0..5 {
                let due = iv.tick().await;
                assert!(due > last);
                last = due;
            }
            assert!(start.elapsed() >= Duration::from_millis(10));
        });
    }
}
