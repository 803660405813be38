//! A future for one io_uring operation that owns its buffers until the kernel is done with them.
//!
//! This follows the "rent" model of io_uring runtimes: the caller gives the buffers to the
//! operation and gets them back with the result. Dropping the future before completion does not
//! free them: they move into the reactor, the operation is cancelled, and they are freed when the
//! kernel reports the operation finished. That makes every operation cancellation-safe.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue;

use crate::executor::with_reactor;

/// An operation in flight. `T` holds everything the kernel may read or write.
pub(crate) struct Op<T: 'static> {
    index: u32,
    data: Option<T>,
}

/// What an operation returns: the kernel's result, the completion flags and the buffers.
pub(crate) struct Completion<T> {
    pub(crate) result: io::Result<u32>,
    #[allow(dead_code)]
    pub(crate) flags: u32,
    pub(crate) data: T,
}

impl<T: 'static> Op<T> {
    /// Submits the entry built from `data`.
    ///
    /// # Safety
    ///
    /// Every pointer in the entry must point into heap memory owned by `data` (so that moving
    /// `data` does not move it) or into memory that outlives the operation.
    pub(crate) unsafe fn submit(mut data: T, build: impl FnOnce(&mut T) -> squeue::Entry) -> Self {
        let entry = build(&mut data);
        // SAFETY: forwarded from the caller; `data` is kept alive by this `Op` or by the reactor.
        let index = with_reactor(|r| unsafe { r.submit(entry) });
        Self { index, data: Some(data) }
    }

    /// Like [`Op::submit`], for receives: the entry reaches the kernel once the executor has run
    /// its ready tasks (see `Reactor::submit_deferred`).
    ///
    /// # Safety
    ///
    /// As [`Op::submit`].
    pub(crate) unsafe fn submit_deferred(mut data: T, build: impl FnOnce(&mut T) -> squeue::Entry) -> Self {
        let entry = build(&mut data);
        // SAFETY: forwarded from the caller.
        let index = with_reactor(|r| unsafe { r.submit_deferred(entry) });
        Self { index, data: Some(data) }
    }
}

// `Op` never pins `T` in place: the kernel's pointers go to heap memory owned by `T`.
impl<T: 'static> Unpin for Op<T> {}

impl<T: 'static> Future for Op<T> {
    type Output = Completion<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion<T>> {
        // `Op` is `Unpin`: nothing in it is self-referential (the buffers are on the heap).
        let this = self.get_mut();
        let index = this.index;
        match with_reactor(|r| r.poll_slot(index, cx.waker())) {
            None => Poll::Pending,
            Some((res, flags)) => {
                let data = this.data.take().expect("operation polled after completion");
                let result = if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as u32) };
                Poll::Ready(Completion { result, flags, data })
            }
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            let index = self.index;
            if crate::executor::has_reactor() {
                with_reactor(|r| r.orphan(index, Box::new(data)));
            } else {
                // No reactor any more (thread shutting down): the kernel may still write into
                // the buffers, so they are leaked rather than freed.
                std::mem::forget(data);
            }
        }
    }
}

/// Waits until `fd` is readable (`POLLIN`), for descriptors such as pidfds that signal by
/// becoming readable.
pub(crate) async fn poll_readable(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: no buffer.
    let op = unsafe {
        Op::submit((), |_| io_uring::opcode::PollAdd::new(io_uring::types::Fd(fd), libc::POLLIN as u32).build())
    };
    op.await.result.map(drop)
}
