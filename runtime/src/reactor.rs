//! The per-executor io_uring instance and the bookkeeping of operations in flight.
//!
//! Every operation gets a slot; its index is the `user_data` of the submission. An operation
//! owns its buffers until its completion is reaped ([`crate::op::Op`]); if the future that
//! submitted it is dropped first, the buffers move into the slot (`Orphaned`) and the operation is
//! cancelled, so the kernel never writes into freed memory.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::task::Waker;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use crate::error::RuntimeError;

const TAG_SHIFT: u32 = 56;
const TAG_OP: u64 = 0;
const TAG_WAKE: u64 = 1 << TAG_SHIFT;
const TAG_CANCEL: u64 = 2 << TAG_SHIFT;
const TAG_FUTEX: u64 = 3 << TAG_SHIFT;
const TAG_MASK: u64 = 0xff << TAG_SHIFT;

/// futex2 flag: the futex word is 32 bits wide (shared, not process-private, so that a waker in
/// another process can reach us).
const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX_BITSET_MATCH_ANY: u64 = 0xffff_ffff;

enum Slot {
    Free,
    Pending(Option<Waker>),
    Done {
        result: i32,
        flags: u32,
    },
    /// The submitting future was dropped; the data is kept until the completion arrives.
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
}

struct FutexArm {
    addr: usize,
    outstanding: bool,
}

/// How the kernel tells us that completions are waiting to be reaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskrunMode {
    /// `DEFER_TASKRUN` + `TASKRUN_FLAG`: completions are posted only when we enter the kernel
    /// with `GETEVENTS`; a flag in the shared ring says when that is needed.
    Deferred,
    /// Plain ring: completions may be posted by task work on any kernel entry; a spinning loop
    /// enters the kernel on every idle iteration.
    Plain,
}

pub(crate) struct Reactor {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    mode: TaskrunMode,
    wake_fd: OwnedFd,
    wake_buf: Box<u64>,
    wake_armed: bool,
    futexes: Vec<FutexArm>,
    closing: bool,
    /// Receive operations not yet handed to the kernel (see [`Reactor::submit_deferred`]),
    /// deferred during the current loop iteration...
    deferred: Vec<(u32, squeue::Entry)>,
    /// ...and during the previous one (these go to the kernel at the next flush at the latest).
    deferred_aged: Vec<(u32, squeue::Entry)>,
    /// Set when the kernel refused a futex wait (io_uring futex operations need Linux 6.7).
    futex_unsupported: bool,
}

impl Reactor {
    pub(crate) fn new(entries: u32) -> Result<Self, RuntimeError> {
        let (ring, mode) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .build(entries)
        {
            Ok(ring) => (ring, TaskrunMode::Deferred),
            Err(first) => match IoUring::builder().setup_cqsize(entries * 4).build(entries) {
                Ok(ring) => {
                    tracing::debug!(error = %first, "io_uring DEFER_TASKRUN unavailable, plain ring");
                    (ring, TaskrunMode::Plain)
                }
                Err(source) => return Err(RuntimeError::IoUringUnavailable { source }),
            },
        };
        // SAFETY: plain syscall; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(RuntimeError::Eventfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut reactor = Self {
            ring,
            slots: Vec::with_capacity(256),
            free: Vec::new(),
            in_flight: 0,
            mode,
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            futexes: Vec::new(),
            closing: false,
            deferred: Vec::new(),
            deferred_aged: Vec::new(),
            futex_unsupported: false,
        };
        reactor.arm_wake();
        Ok(reactor)
    }

    pub(crate) fn wake_fd(&self) -> i32 {
        self.wake_fd.as_raw_fd()
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let entry = opcode::Read::new(types::Fd(self.wake_fd.as_raw_fd()), (&mut *self.wake_buf as *mut u64).cast(), 8)
            .build()
            .user_data(TAG_WAKE);
        // SAFETY: the buffer is a heap allocation owned by the reactor, which outlives the ring's
        // use of it (the reactor cancels and drains before it is dropped).
        unsafe { self.push(entry) };
        self.wake_armed = true;
    }

    /// Pushes a submission, flushing the queue to the kernel if it is full.
    ///
    /// # Safety
    ///
    /// Every buffer the entry points to must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                if err.raw_os_error() != Some(libc::EBUSY) {
                    panic!("io_uring submit failed while the submission queue was full: {err}");
                }
                self.reap_into_slots();
            }
        }
    }

    /// Submits an operation and returns its slot index.
    ///
    /// # Safety
    ///
    /// Every buffer the entry points to must stay valid until the slot is released with
    /// [`Reactor::take_result`] or orphaned with [`Reactor::orphan`].
    pub(crate) unsafe fn submit(&mut self, entry: squeue::Entry) -> u32 {
        let index = self.alloc_slot();
        // SAFETY: forwarded from the caller.
        unsafe { self.push(entry.user_data(TAG_OP | u64::from(index))) };
        index
    }

    fn alloc_slot(&mut self) -> u32 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::Free);
                u32::try_from(self.slots.len() - 1).expect("more than 2^32 operations in flight")
            }
        };
        self.slots[index as usize] = Slot::Pending(None);
        self.in_flight += 1;
        index
    }

    /// Like [`Reactor::submit`], but the entry waits in a list until [`Reactor::flush_deferred`],
    /// which the executor calls when it has run every ready task, and before it parks. Receives
    /// are submitted this way so that replies produced by the tasks a receive woke reach the
    /// kernel first: a receive submitted ahead of a send in one `io_uring_enter` delays the send
    /// by the receive's attempt and poll arming (about 0.7 µs here). Nothing is lost by waiting:
    /// bytes that arrive meanwhile stay in the socket buffer.
    ///
    /// # Safety
    ///
    /// As [`Reactor::submit`].
    pub(crate) unsafe fn submit_deferred(&mut self, entry: squeue::Entry) -> u32 {
        let index = self.alloc_slot();
        self.deferred.push((index, entry.user_data(TAG_OP | u64::from(index))));
        index
    }

    /// Once per loop iteration: hands to the kernel the entries deferred in the previous
    /// iteration (after whatever this iteration's tasks submitted), or all of them when `all`
    /// (nothing else is ready to run, or the executor is about to park). A receive therefore
    /// waits at most one iteration, however busy the executor is.
    pub(crate) fn flush_deferred(&mut self, all: bool) {
        let aged = std::mem::take(&mut self.deferred_aged);
        let young = std::mem::take(&mut self.deferred);
        for (_, entry) in aged {
            // SAFETY: the entries were accepted under `submit_deferred`'s contract.
            unsafe { self.push(entry) };
        }
        if all {
            for (_, entry) in young {
                // SAFETY: as above.
                unsafe { self.push(entry) };
            }
        } else {
            self.deferred_aged = young;
        }
    }

    /// If the operation completed, releases its slot and returns `(result, flags)`; otherwise
    /// records the waker.
    pub(crate) fn poll_slot(&mut self, index: u32, waker: &Waker) -> Option<(i32, u32)> {
        let slot = &mut self.slots[index as usize];
        match slot {
            Slot::Done { result, flags } => {
                let out = (*result, *flags);
                *slot = Slot::Free;
                self.free.push(index);
                Some(out)
            }
            Slot::Pending(w) => {
                match w {
                    Some(old) if old.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                None
            }
            Slot::Free | Slot::Orphaned(_) => unreachable!("polled a released operation slot"),
        }
    }

    /// The future of an operation was dropped before completion: keep `data` alive until the
    /// kernel is done with it, and ask the kernel to cancel the operation.
    pub(crate) fn orphan(&mut self, index: u32, data: Box<dyn Any>) {
        let queued = [&mut self.deferred, &mut self.deferred_aged]
            .into_iter()
            .find_map(|list| list.iter().position(|(i, _)| *i == index).map(|pos| list.swap_remove(pos)));
        if queued.is_some() {
            // Never reached the kernel: forget it.
            self.slots[index as usize] = Slot::Free;
            self.free.push(index);
            self.in_flight -= 1;
            drop(data);
            return;
        }
        let slot = &mut self.slots[index as usize];
        match slot {
            Slot::Done { .. } => {
                *slot = Slot::Free;
                self.free.push(index);
                drop(data);
            }
            Slot::Pending(_) => {
                *slot = Slot::Orphaned(data);
                let cancel = opcode::AsyncCancel::new(TAG_OP | u64::from(index)).build().user_data(TAG_CANCEL);
                // SAFETY: a cancellation points to no buffer.
                unsafe { self.push(cancel) };
            }
            Slot::Free | Slot::Orphaned(_) => unreachable!("orphaned a released operation slot"),
        }
    }

    /// Arms a wait on a shared futex word, unless one is already outstanding on it.
    ///
    /// # Safety
    ///
    /// `addr` must point to a 4-byte aligned word that stays mapped until [`Reactor::disarm_futex`]
    /// is called for it.
    pub(crate) unsafe fn arm_futex(&mut self, addr: *const u32, expected: u32) -> bool {
        if self.futex_unsupported {
            return false;
        }
        let key = addr as usize;
        let index = match self.futexes.iter().position(|f| f.addr == key) {
            Some(i) if self.futexes[i].outstanding => return true,
            Some(i) => i,
            None => match self.futexes.iter().position(|f| f.addr == 0 && !f.outstanding) {
                // Reuse an entry freed by `disarm_futex`.
                Some(i) => {
                    self.futexes[i].addr = key;
                    i
                }
                None => {
                    self.futexes.push(FutexArm { addr: key, outstanding: false });
                    self.futexes.len() - 1
                }
            },
        };
        self.futexes[index].outstanding = true;
        let entry = opcode::FutexWait::new(addr, u64::from(expected), FUTEX_BITSET_MATCH_ANY, FUTEX2_SIZE_U32)
            .build()
            .user_data(TAG_FUTEX | index as u64);
        // SAFETY: forwarded from the caller (the word stays mapped while armed).
        unsafe { self.push(entry) };
        true
    }

    /// Cancels an armed futex wait and forgets the word; waits (bounded) until the kernel has let
    /// go of it.
    pub(crate) fn disarm_futex(&mut self, addr: *const u32) {
        let key = addr as usize;
        let Some(index) = self.futexes.iter().position(|f| f.addr == key) else { return };
        if self.futexes[index].outstanding {
            let cancel = opcode::AsyncCancel::new(TAG_FUTEX | index as u64).build().user_data(TAG_CANCEL);
            // SAFETY: a cancellation points to no buffer.
            unsafe { self.push(cancel) };
            for _ in 0..1000 {
                if !self.futexes[index].outstanding {
                    break;
                }
                let _ = self.enter(Some(Duration::from_millis(1)), true);
                self.reap_into_slots();
            }
        }
        // Keep the index stable for other armed words: mark it unused instead of removing it.
        self.futexes[index].addr = 0;
        self.futexes[index].outstanding = false;
    }

    /// Whether a spinning loop has to enter the kernel to see completions.
    pub(crate) fn needs_enter(&mut self) -> bool {
        let mut sq = self.ring.submission();
        sq.sync();
        !sq.is_empty() || self.mode == TaskrunMode::Plain || sq.taskrun() || sq.cq_overflow()
    }

    /// Submits pending entries and, if `wait`, blocks until one completion or `timeout`.
    pub(crate) fn enter(&mut self, timeout: Option<Duration>, wait: bool) -> Result<(), RuntimeError> {
        let pending = self.ring.submission().len() as u32;
        let submitter = self.ring.submitter();
        let result = match (wait, timeout) {
            (false, _) => {
                if self.mode == TaskrunMode::Plain {
                    // SAFETY: no extended argument; flags are valid for io_uring_enter.
                    unsafe {
                        submitter.enter::<libc::sigset_t>(pending, 0, 1 /* GETEVENTS */, None)
                    }
                } else {
                    submitter.submit_and_wait(0)
                }
            }
            (true, None) => submitter.submit_and_wait(1),
            (true, Some(t)) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(RuntimeError::Enter(e)),
        }
    }

    /// Moves every available completion into its slot, waking the futures waiting on them.
    /// Returns how many completions were reaped.
    pub(crate) fn reap_into_slots(&mut self) -> usize {
        let mut count = 0;
        let mut rearm_wake = false;
        let mut wakers: Vec<Waker> = Vec::new();
        for cqe in self.ring.completion() {
            count += 1;
            let ud = cqe.user_data();
            match ud & TAG_MASK {
                TAG_OP => {
                    let index = (ud & !TAG_MASK) as usize;
                    let slot = &mut self.slots[index];
                    match std::mem::replace(slot, Slot::Done { result: cqe.result(), flags: cqe.flags() }) {
                        Slot::Pending(waker) => wakers.extend(waker),
                        Slot::Orphaned(data) => {
                            *slot = Slot::Free;
                            self.free.push(index as u32);
                            self.in_flight -= 1;
                            drop(data);
                            continue;
                        }
                        Slot::Done { .. } | Slot::Free => unreachable!("two completions for one operation"),
                    }
                    self.in_flight -= 1;
                }
                TAG_WAKE => {
                    self.wake_armed = false;
                    rearm_wake = true;
                }
                TAG_FUTEX => {
                    let index = (ud & !TAG_MASK) as usize;
                    if let Some(f) = self.futexes.get_mut(index) {
                        f.outstanding = false;
                    }
                    if matches!(-cqe.result(), libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS) {
                        if !self.futex_unsupported {
                            tracing::info!(
                                "io_uring futex waits unavailable (Linux 6.7 needed); idle shared-memory receivers poll"
                            );
                        }
                        self.futex_unsupported = true;
                    }
                }
                _ => {} // cancellation results carry nothing we need
            }
        }
        if rearm_wake && !self.closing {
            self.arm_wake();
        }
        for w in wakers {
            w.wake();
        }
        count
    }

    /// Drops the wakers of pending operations (used at shutdown so their tasks can be dropped).
    pub(crate) fn take_pending_wakers(&mut self) -> Vec<Waker> {
        self.slots
            .iter_mut()
            .filter_map(|s| match s {
                Slot::Pending(w) => w.take(),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // Cancel everything still in flight and wait (bounded) for the kernel to let go of the
        // buffers. Whatever is still in flight after that is leaked, never freed under the kernel.
        self.closing = true;
        self.deferred.clear();
        self.deferred_aged.clear();
        let cancel_all = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(TAG_CANCEL);
        // SAFETY: a cancellation points to no buffer.
        unsafe { self.push(cancel_all) };
        for _ in 0..100 {
            self.reap_into_slots();
            let futex_out = self.futexes.iter().any(|f| f.outstanding);
            if self.in_flight == 0 && !self.wake_armed && !futex_out {
                return;
            }
            let _ = self.enter(Some(Duration::from_millis(10)), true);
        }
        tracing::warn!(
            in_flight = self.in_flight,
            "io_uring operations did not finish at shutdown; leaking their buffers"
        );
        for slot in self.slots.drain(..) {
            std::mem::forget(slot);
        }
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
    }
}
