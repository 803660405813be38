//! Thread-per-core executors.
//!
//! A [`LocalExecutor`] runs on one thread, normally pinned to one core, and owns one io_uring
//! instance. Tasks are `!Send` futures spawned on it with [`spawn`]; they never move to another
//! thread. Other threads reach an executor only through explicit channels
//! ([`crate::channel`]), whose wake-ups interrupt a parked executor through an eventfd.
//!
//! # The loop
//!
//! Each iteration: run ready tasks (a bounded batch), reap io_uring completions, fire due timers,
//! run every [poll hook](PollHook). If nothing made progress the executor is idle: it keeps
//! spinning for the configured spin budget, then *parks* in `io_uring_enter` until a completion,
//! a timer, a cross-thread wake or a futex armed by a hook. A spin budget of zero never
//! busy-waits. This is Derecho's polling thread made adaptive: on a machine with fewer cores than
//! members, a member that has nothing to do gives its core away.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use std::{fmt, io, ptr, thread};

use async_task::Runnable;
use concurrent_queue::ConcurrentQueue;

use crate::error::RuntimeError;
use crate::reactor::Reactor;

/// Tasks run per round before the executor looks at I/O again.
const TASK_BATCH: usize = 128;
/// Rounds of "main future, then ready tasks" per loop iteration.
const MAIN_ROUNDS: usize = 4;
/// Operations that complete without waiting (a frame sent into free queue space, an event
/// already queued) allowed per loop iteration before they make their task yield: a task that
/// loops over such operations cannot keep the executor's timers, I/O and hooks (heartbeats among
/// them) from running.
const COOP_BUDGET: u32 = 256;

/// Where an executor's thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Pinned to this core (a CPU number as the kernel counts them).
    Core(usize),
    /// Not pinned: the scheduler decides. Meant for tests that run many executors on few cores.
    Unpinned,
}

/// Configures and starts executors.
///
/// # Examples
///
/// ```
/// use derecho_runtime::{Builder, Placement};
/// use std::time::Duration;
///
/// let ex = Builder::new().placement(Placement::Unpinned).spin_budget(Duration::ZERO).build()?;
/// let answer = ex.block_on(async {
///     let task = derecho_runtime::spawn(async { 6 * 7 });
///     task.await
/// });
/// assert_eq!(answer, 42);
/// # Ok::<(), derecho_runtime::RuntimeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    name: String,
    placement: Placement,
    spin_budget: Duration,
    spin_yield: bool,
    ring_entries: u32,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Defaults: unpinned, spin budget 0 (never busy-wait), 256 submission entries.
    pub fn new() -> Self {
        Self {
            name: "derecho-exec".into(),
            placement: Placement::Unpinned,
            spin_budget: Duration::ZERO,
            spin_yield: false,
            ring_entries: 256,
        }
    }

    /// The thread name used by [`Builder::spawn_thread`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where the executor runs.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Pins the executor to `core`.
    pub fn pin_to_core(self, core: usize) -> Self {
        self.placement(Placement::Core(core))
    }

    /// How long an idle executor keeps polling before it parks. Zero never busy-waits.
    pub fn spin_budget(mut self, budget: Duration) -> Self {
        self.spin_budget = budget;
        self
    }

    /// While spinning, offer the core to other runnable threads (`sched_yield`) on every idle
    /// iteration instead of a pause instruction. For executors that share cores with others,
    /// such as several members of a group on a machine with fewer cores than members: a plain
    /// spinning executor holds its core while the one it shares the core with has work (on a
    /// 2-core VM with three members, an ordered call took 1.9 ms instead of 0.13 ms). A thread
    /// alone on its core pays one system call per idle iteration.
    pub fn spin_yield(mut self, yield_while_spinning: bool) -> Self {
        self.spin_yield = yield_while_spinning;
        self
    }

    /// io_uring submission queue size (rounded up to a power of two by the kernel).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries.clamp(8, 32768);
        self
    }

    /// Builds an executor on the current thread, pinning the thread if asked.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::NoSuchCore`] if the core is not available, [`RuntimeError::Pin`] if pinning
    /// fails, [`RuntimeError::IoUringUnavailable`] if io_uring cannot be set up.
    pub fn build(self) -> Result<LocalExecutor, RuntimeError> {
        if let Placement::Core(core) = self.placement {
            check_core(core)?;
            pin_current_thread(core)?;
        }
        LocalExecutor::new(self)
    }

    /// Starts a new thread running an executor, and `make()`'s future on it.
    ///
    /// The closure runs on the new thread, so the future it returns need not be `Send`.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`] (reported before this returns), or [`RuntimeError::Spawn`].
    pub fn spawn_thread<F, Fut>(self, make: F) -> Result<ExecutorThread<Fut::Output>, RuntimeError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        if let Placement::Core(core) = self.placement {
            check_core(core)?;
        }
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || match self.build() {
                Ok(ex) => {
                    let _ = started_tx.send(Ok(()));
                    Some(ex.block_on(make()))
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    None
                }
            })
            .map_err(RuntimeError::Spawn)?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(ExecutorThread { handle }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(RuntimeError::Panicked),
        }
    }
}

/// A thread started by [`Builder::spawn_thread`].
#[derive(Debug)]
pub struct ExecutorThread<T> {
    handle: thread::JoinHandle<Option<T>>,
}

impl<T> ExecutorThread<T> {
    /// Waits for the thread's future to finish and returns its output.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Panicked`] if the thread panicked.
    pub fn join(self) -> Result<T, RuntimeError> {
        match self.handle.join() {
            Ok(Some(v)) => Ok(v),
            _ => Err(RuntimeError::Panicked),
        }
    }
}

/// The cores executors may be pinned to: the online CPUs, restricted by the cgroup's cpuset when
/// one is set (cgroup v2 `cpuset.cpus.effective`, or v1 `cpuset.cpus`).
///
/// This is deliberately not the calling thread's affinity mask: a thread that pinned itself to
/// one core (or a child process that inherited such a mask) may still start executors on the
/// others.
pub fn available_cores() -> Vec<usize> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| parse_cpu_list(s.trim()));
    let online = read("/sys/devices/system/cpu/online").unwrap_or_else(affinity_cores);
    let cpuset = read("/sys/fs/cgroup/cpuset.cpus.effective").or_else(|| read("/sys/fs/cgroup/cpuset/cpuset.cpus"));
    match cpuset {
        Some(allowed) if !allowed.is_empty() => online.into_iter().filter(|c| allowed.contains(c)).collect(),
        _ => online,
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse::<usize>().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// The calling thread's affinity mask (the fallback when sysfs is not readable).
fn affinity_cores() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: `set` was filled by the kernel; CPU_ISSET only reads it.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn check_core(core: usize) -> Result<(), RuntimeError> {
    let available = available_cores();
    if available.contains(&core) { Ok(()) } else { Err(RuntimeError::NoSuchCore { core, available }) }
}

fn pin_current_thread(core: usize) -> Result<(), RuntimeError> {
    // SAFETY: zeroed `cpu_set_t` is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit below CPU_SETSIZE (`check_core` proved `core` is such a CPU).
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: the pointer and size describe `set`; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(RuntimeError::Pin { core, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// The part of an executor other threads may touch: its run queue and its wake-up.
struct Shared {
    queue: ConcurrentQueue<Runnable>,
    parked: AtomicBool,
    wake_fd: OwnedFd,
}

impl Shared {
    fn schedule(&self, runnable: Runnable) {
        if self.queue.push(runnable).is_err() {
            // The executor is shutting down; dropping the runnable drops the task's future.
            return;
        }
        self.unpark();
    }

    fn unpark(&self) {
        // Pairs with the SeqCst store of `parked` followed by a queue check in `park`: either the
        // executor sees our push, or we see it parked and wake it.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
            let _ = unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Counters of the executor loop, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Loop iterations.
    pub iterations: u64,
    /// Times the executor parked in the kernel.
    pub parks: u64,
    /// Tasks polled.
    pub tasks_run: u64,
}

/// A function run on every loop iteration of an executor, such as a poller of shared memory or of
/// an RDMA completion queue.
pub trait PollHook {
    /// Looks for work; returns how much it did (0 when there was nothing to do).
    fn poll(&mut self) -> usize;

    /// Called before the executor parks. Return `false` if work arrived since the last
    /// [`PollHook::poll`] and the executor must not park. A hook that cannot arrange to be woken
    /// should bound the park with [`Park::wake_within`] (the default does, with 1 ms).
    fn prepare_park(&mut self, park: &mut Park<'_>) -> bool {
        park.wake_within(Duration::from_millis(1));
        true
    }

    /// Called when the executor runs again after [`PollHook::prepare_park`] (whether it parked or
    /// a hook vetoed).
    fn after_park(&mut self) {}
}

/// Lets a [`PollHook`] arrange its wake-up before the executor parks.
pub struct Park<'a> {
    reactor: &'a mut Reactor,
    timeout: Option<Duration>,
}

impl fmt::Debug for Park<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Park").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Park<'_> {
    /// The executor parks for at most `d`.
    pub fn wake_within(&mut self, d: Duration) {
        self.timeout = Some(self.timeout.map_or(d, |t| t.min(d)));
    }

    /// Wakes the executor when another thread or process changes the futex word at `word` from
    /// `expected` and calls `FUTEX_WAKE` on it. Returns `false` if the kernel has no io_uring
    /// futex waits (they need Linux 6.7): the hook must then bound the park instead.
    ///
    /// # Safety
    ///
    /// `word` must stay mapped until [`disarm_futex`] is called for it on this executor.
    pub(crate) unsafe fn futex_wait(&mut self, word: *const u32, expected: u32) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { self.reactor.arm_futex(word, expected) }
    }
}

/// Cancels a futex wait armed with [`Park::futex_wait`] on this thread's executor.
pub(crate) fn disarm_futex(word: *const u32) {
    if has_reactor() {
        with_reactor(|r| r.disarm_futex(word));
    }
}

/// Identifies a registered poll hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookId(u64);

#[derive(Default)]
struct Hooks {
    list: Vec<(HookId, Box<dyn PollHook>)>,
    removed: Vec<HookId>,
    next_id: u64,
}

/// Per-executor state, reached through a thread-local pointer while the executor runs.
pub(crate) struct ExecContext {
    shared: Arc<Shared>,
    reactor: RefCell<Reactor>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer_id: Cell<u64>,
    hooks: RefCell<Hooks>,
    spin_budget: Cell<Duration>,
    spin_yield: Cell<bool>,
    stats: Cell<LoopStats>,
    coop: Cell<u32>,
}

thread_local! {
    static CURRENT: Cell<*const ExecContext> = const { Cell::new(ptr::null()) };
}

fn current() -> Option<&'static ExecContext> {
    let p = CURRENT.with(Cell::get);
    // SAFETY: the pointer is set by `block_on` to an `ExecContext` kept alive by the
    // `LocalExecutor` for the whole `block_on` call, and cleared (by a guard) before it returns.
    // Only code running inside that call, on this thread, observes it.
    if p.is_null() { None } else { Some(unsafe { &*p }) }
}

fn expect_current() -> &'static ExecContext {
    current().expect("no derecho executor on this thread: call this inside LocalExecutor::block_on")
}

pub(crate) fn has_reactor() -> bool {
    current().is_some_and(|cx| cx.reactor.try_borrow_mut().is_ok())
}

pub(crate) fn with_reactor<R>(f: impl FnOnce(&mut Reactor) -> R) -> R {
    f(&mut expect_current().reactor.borrow_mut())
}

/// An executor bound to the thread that built it.
pub struct LocalExecutor {
    cx: Box<ExecContext>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for LocalExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalExecutor").field("stats", &self.cx.stats.get()).finish_non_exhaustive()
    }
}

struct MainWaker {
    woken: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.shared.unpark();
    }
}

struct EnterGuard;
impl Drop for EnterGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(ptr::null()));
    }
}

impl LocalExecutor {
    fn new(b: Builder) -> Result<Self, RuntimeError> {
        let reactor = Reactor::new(b.ring_entries)?;
        // SAFETY: dup of a descriptor we own; the result is checked.
        let dup = unsafe { libc::fcntl(reactor.wake_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(RuntimeError::Eventfd(io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let shared = Arc::new(Shared { queue: ConcurrentQueue::unbounded(), parked: AtomicBool::new(false), wake_fd });
        Ok(Self {
            cx: Box::new(ExecContext {
                shared,
                reactor: RefCell::new(reactor),
                timers: RefCell::new(BTreeMap::new()),
                next_timer_id: Cell::new(0),
                hooks: RefCell::new(Hooks::default()),
                spin_budget: Cell::new(b.spin_budget),
                spin_yield: Cell::new(b.spin_yield),
                stats: Cell::new(LoopStats::default()),
                coop: Cell::new(COOP_BUDGET),
            }),
            _not_send: PhantomData,
        })
    }

    /// Loop counters so far.
    pub fn stats(&self) -> LoopStats {
        self.cx.stats.get()
    }

    /// Runs `future` to completion on this thread, running spawned tasks meanwhile.
    ///
    /// Tasks still pending when it returns stay spawned and run again in the next `block_on`.
    ///
    /// # Panics
    ///
    /// If called from inside another `block_on` on the same thread, or if `io_uring_enter` fails
    /// in a way that leaves the executor unable to continue.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        assert!(current().is_none(), "block_on called inside a running derecho executor");
        CURRENT.with(|c| c.set(&*self.cx as *const ExecContext));
        let _guard = EnterGuard;
        let cx = &*self.cx;
        let main = Arc::new(MainWaker { woken: AtomicBool::new(true), shared: cx.shared.clone() });
        let waker = Waker::from(main.clone());
        let mut task_cx = TaskContext::from_waker(&waker);
        let mut future = pin!(future);
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut progress = 0usize;
            cx.coop.set(COOP_BUDGET);
            // Run the main future and the ready tasks until both are quiet (a few bounded
            // rounds), so that a chain such as "receive, handle, reply" completes within one
            // iteration and its reply reaches the kernel in this iteration's submission.
            for _ in 0..MAIN_ROUNDS {
                let mut round = 0;
                if main.woken.swap(false, Ordering::SeqCst) {
                    if let Poll::Ready(v) = future.as_mut().poll(&mut task_cx) {
                        return v;
                    }
                    round += 1;
                }
                round += cx.run_tasks();
                if round == 0 {
                    break;
                }
                progress += round;
            }
            progress += cx.poll_io(&main.woken);
            progress += cx.run_hooks();
            cx.bump(|s| s.iterations += 1);
            // One clock read per iteration at most, and none on a busy iteration without timers.
            let has_timers = !cx.timers.borrow().is_empty();
            if progress > 0 && !has_timers {
                idle_since = None;
                continue;
            }
            let now = Instant::now();
            if has_timers {
                progress += cx.fire_timers(now);
            }
            if progress > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) < cx.spin_budget.get() {
                if cx.spin_yield.get() {
                    // SAFETY: no preconditions.
                    unsafe { libc::sched_yield() };
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            cx.park(&main.woken).unwrap_or_else(|e| panic!("executor cannot continue: {e}"));
            idle_since = None;
        }
    }
}

impl ExecContext {
    fn bump(&self, f: impl FnOnce(&mut LoopStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let shared = self.shared.clone();
        let (runnable, task) = async_task::Builder::new()
            .propagate_panic(true)
            .spawn_local(move |_: &()| future, move |r| shared.schedule(r));
        runnable.schedule();
        JoinHandle { task: Some(task) }
    }

    fn run_tasks(&self) -> usize {
        let mut n = 0;
        while n < TASK_BATCH {
            match self.shared.queue.pop() {
                Ok(r) => {
                    r.run();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if n > 0 {
            self.bump(|s| s.tasks_run += n as u64);
        }
        n
    }

    fn poll_io(&self, main_woken: &AtomicBool) -> usize {
        let mut reactor = self.reactor.borrow_mut();
        reactor.flush_deferred(self.shared.queue.is_empty() && !main_woken.load(Ordering::Relaxed));
        if reactor.needs_enter() {
            reactor.enter(None, false).unwrap_or_else(|e| panic!("executor cannot continue: {e}"));
        }
        reactor.reap_into_slots()
    }

    fn fire_timers(&self, now: Instant) -> usize {
        let due = {
            let mut timers = self.timers.borrow_mut();
            let mut due = Vec::new();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            due
        };
        let n = due.len();
        due.into_iter().for_each(Waker::wake);
        n
    }

    fn run_hooks(&self) -> usize {
        let mut list = {
            let mut hooks = self.hooks.borrow_mut();
            if hooks.list.is_empty() {
                return 0;
            }
            std::mem::take(&mut hooks.list)
        };
        let mut progress = 0;
        for (_, hook) in &mut list {
            progress += hook.poll();
        }
        self.restore_hooks(list);
        progress
    }

    fn restore_hooks(&self, mut list: Vec<(HookId, Box<dyn PollHook>)>) {
        let mut hooks = self.hooks.borrow_mut();
        list.append(&mut hooks.list);
        if !hooks.removed.is_empty() {
            let removed = std::mem::take(&mut hooks.removed);
            list.retain(|(id, _)| !removed.contains(id));
        }
        hooks.list = list;
    }

    fn park(&self, main_woken: &AtomicBool) -> Result<(), RuntimeError> {
        self.shared.parked.store(true, Ordering::SeqCst);
        if !self.shared.queue.is_empty() || main_woken.load(Ordering::SeqCst) {
            self.shared.parked.store(false, Ordering::SeqCst);
            return Ok(());
        }
        // Nothing deferred may sleep with us.
        self.reactor.borrow_mut().flush_deferred(true);
        let mut timeout =
            self.timers.borrow().first_key_value().map(|((at, _), _)| at.saturating_duration_since(Instant::now()));
        let mut list = std::mem::take(&mut self.hooks.borrow_mut().list);
        let mut veto = false;
        {
            let mut reactor = self.reactor.borrow_mut();
            for (_, hook) in &mut list {
                let mut park = Park { reactor: &mut reactor, timeout };
                if !hook.prepare_park(&mut park) {
                    veto = true;
                    break;
                }
                timeout = park.timeout;
            }
        }
        let result = if veto {
            Ok(())
        } else {
            self.bump(|s| s.parks += 1);
            self.reactor.borrow_mut().enter(timeout, true)
        };
        self.shared.parked.store(false, Ordering::SeqCst);
        for (_, hook) in &mut list {
            hook.after_park();
        }
        self.restore_hooks(list);
        result
    }

    fn shutdown(&self) {
        // Drop every task: scheduled ones by dropping their runnables, pending ones by waking
        // them (their wakers live in the reactor and the timers) so they are scheduled, then
        // dropping them. Operations they own are orphaned into the reactor, which cancels them.
        for _ in 0..8 {
            while let Ok(r) = self.shared.queue.pop() {
                drop(r);
            }
            let mut wakers = self.reactor.borrow_mut().take_pending_wakers();
            wakers.extend(std::mem::take(&mut *self.timers.borrow_mut()).into_values());
            if wakers.is_empty() && self.shared.queue.is_empty() {
                break;
            }
            wakers.into_iter().for_each(Waker::wake);
        }
        self.shared.queue.close();
        while let Ok(r) = self.shared.queue.pop() {
            drop(r);
        }
        self.hooks.borrow_mut().list.clear();
    }
}

impl Drop for LocalExecutor {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(&*self.cx as *const ExecContext));
        let _guard = EnterGuard;
        self.cx.shutdown();
    }
}

/// Spawns a task on the current thread's executor.
///
/// # Panics
///
/// If no executor runs on this thread (call it inside [`LocalExecutor::block_on`]).
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    expect_current().spawn(future)
}

/// Registers a hook run on every loop iteration of the current executor.
///
/// # Panics
///
/// If no executor runs on this thread.
pub fn add_poll_hook(hook: impl PollHook + 'static) -> HookId {
    let mut hooks = expect_current().hooks.borrow_mut();
    let id = HookId(hooks.next_id);
    hooks.next_id += 1;
    hooks.list.push((id, Box::new(hook)));
    id
}

/// Removes a poll hook; it is not run again after the current iteration.
pub fn remove_poll_hook(id: HookId) {
    if let Some(cx) = current() {
        let mut hooks = cx.hooks.borrow_mut();
        hooks.list.retain(|(i, _)| *i != id);
        hooks.removed.push(id);
    }
}

/// Changes the spin budget of the current executor.
pub fn set_spin_budget(budget: Duration) {
    expect_current().spin_budget.set(budget);
}

/// The spin budget of the current executor (zero when no executor runs on this thread).
pub fn spin_budget() -> Duration {
    current().map_or(Duration::ZERO, |cx| cx.spin_budget.get())
}

/// Loop counters of the current executor.
pub fn loop_stats() -> LoopStats {
    expect_current().stats.get()
}

/// The output of a spawned task. Dropping it detaches the task, which keeps running.
pub struct JoinHandle<T> {
    task: Option<async_task::Task<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").finish_non_exhaustive()
    }
}

impl<T> JoinHandle<T> {
    /// Cancels the task: its future is dropped at the next opportunity and never polled again.
    pub fn abort(mut self) {
        drop(self.task.take());
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<T> {
        Pin::new(self.task.as_mut().expect("JoinHandle polled after abort")).poll(cx)
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

/// Spends one unit of the executor's cooperative budget; when the budget of this loop iteration
/// is spent, returns `Pending` (after waking the task) so that the task yields. Operations that
/// can complete without ever waiting call this first.
pub(crate) fn poll_coop(cx: &mut TaskContext<'_>) -> Poll<()> {
    if let Some(ecx) = current() {
        let left = ecx.coop.get();
        if left == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ecx.coop.set(left - 1);
    }
    Poll::Ready(())
}

/// Yields to the executor once: other ready tasks, I/O and hooks run before this task resumes.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

pub(crate) fn register_timer(at: Instant, waker: &Waker, previous: Option<(Instant, u64)>) -> (Instant, u64) {
    let cx = expect_current();
    let mut timers = cx.timers.borrow_mut();
    if let Some(key) = previous
        && let Some(w) = timers.get_mut(&key)
    {
        if !w.will_wake(waker) {
            *w = waker.clone();
        }
        return key;
    }
    let id = cx.next_timer_id.get();
    cx.next_timer_id.set(id + 1);
    timers.insert((at, id), waker.clone());
    (at, id)
}

pub(crate) fn cancel_timer(key: (Instant, u64)) {
    if let Some(cx) = current() {
        // The map is borrowed only briefly inside this module and never while a `Sleep` is
        // dropped; a failed borrow would be a bug here, not a condition to skip.
        cx.timers.borrow_mut().remove(&key);
    }
}

/// Timers registered on the current executor and not yet fired or cancelled.
pub fn timers_pending() -> usize {
    current().map_or(0, |cx| cx.timers.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn spawn_and_join() {
        let ex = Builder::new().build().unwrap();
        let out = ex.block_on(async {
            let a = spawn(async { 1 });
            let b = spawn(async { 2 });
            a.await + b.await
        });
        assert_eq!(out, 3);
    }

    #[test]
    fn tasks_are_not_send() {
        let ex = Builder::new().build().unwrap();
        let shared = Rc::new(Cell::new(0));
        ex.block_on(async {
            let s = shared.clone();
            spawn(async move {
                yield_now().await;
                s.set(s.get() + 1);
            })
            .await;
        });
        assert_eq!(shared.get(), 1);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn a_pinned_thread_can_start_executors_on_other_cores() {
        let cores = available_cores();
        if cores.len() < 2 {
            eprintln!("skipped: one core");
            return;
        }
        let (first, last) = (cores[0], *cores.last().unwrap());
        let t = Builder::new()
            .pin_to_core(first)
            .spawn_thread(move || async move {
                // From a thread pinned to the first core, start one on the last.
                let inner = Builder::new().pin_to_core(last).spawn_thread(|| async {
                    // SAFETY: plain syscall.
                    unsafe { libc::sched_getcpu() }
                });
                inner.map(|t| t.join())
            })
            .unwrap();
        assert_eq!(t.join().unwrap().unwrap().unwrap(), last as i32);
    }

    #[test]
    fn missing_core_is_named() {
        let err = Builder::new().pin_to_core(100_000).build().unwrap_err();
        match &err {
            RuntimeError::NoSuchCore { core, available } => {
                assert_eq!(*core, 100_000);
                assert!(!available.is_empty());
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("core 100000"), "{err}");
    }

    #[test]
    fn pinned_executor_runs_on_its_core() {
        let core = *available_cores().last().unwrap();
        let t = Builder::new()
            .pin_to_core(core)
            .spawn_thread(move || async move {
                // SAFETY: plain syscall.
                unsafe { libc::sched_getcpu() }
            })
            .unwrap();
        assert_eq!(t.join().unwrap(), core as i32);
    }

    #[test]
    fn panic_in_task_reaches_join_handle() {
        let ex = Builder::new().build().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ex.block_on(async { spawn(async { panic!("boom") }).await })
        }));
        assert!(caught.is_err());
    }

    #[test]
    fn abort_drops_the_future() {
        struct Flag(Rc<Cell<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let ex = Builder::new().build().unwrap();
        let dropped = Rc::new(Cell::new(false));
        ex.block_on(async {
            let flag = Flag(dropped.clone());
            let h = spawn(async move {
                let _f = flag;
                std::future::pending::<()>().await;
            });
            yield_now().await;
            h.abort();
            yield_now().await;
        });
        assert!(dropped.get());
    }

    #[test]
    fn hook_runs_every_iteration_and_can_be_removed() {
        struct Count(Rc<Cell<usize>>);
        impl PollHook for Count {
            fn poll(&mut self) -> usize {
                self.0.set(self.0.get() + 1);
                0
            }
        }
        let ex = Builder::new().build().unwrap();
        let n = Rc::new(Cell::new(0));
        ex.block_on(async {
            let id = add_poll_hook(Count(n.clone()));
            for _ in 0..40 {
                yield_now().await;
            }
            remove_poll_hook(id);
        });
        // The main future gets up to MAIN_ROUNDS polls per iteration; hooks run every iteration.
        let seen = n.get();
        assert!(seen >= 40 / MAIN_ROUNDS, "hook ran {seen} times over 40 yields");
        ex.block_on(async {
            for _ in 0..10 {
                yield_now().await;
            }
        });
        assert_eq!(n.get(), seen, "a removed hook ran again");
    }

    #[test]
    fn a_task_looping_over_ready_operations_lets_timers_run() {
        // The ready path of an operation spends the cooperative budget, so a task that never
        // waits still lets a timer task run.
        let ex = Builder::new().build().unwrap();
        let fired = Rc::new(Cell::new(false));
        ex.block_on(async {
            let f = fired.clone();
            spawn(async move {
                crate::time::sleep(Duration::from_millis(5)).await;
                f.set(true);
            });
            let start = Instant::now();
            while !fired.get() {
                std::future::poll_fn(poll_coop).await;
                assert!(start.elapsed() < Duration::from_secs(5), "timer task starved");
            }
        });
        assert!(fired.get());
    }

    #[test]
    fn zero_spin_budget_parks_when_idle() {
        let ex = Builder::new().spin_budget(Duration::ZERO).build().unwrap();
        ex.block_on(crate::time::sleep(Duration::from_millis(20)));
        let s = ex.stats();
        assert!(s.parks >= 1, "never parked: {s:?}");
        assert!(s.iterations < 1000, "busy-waited with a zero spin budget: {s:?}");
    }

    #[test]
    fn yielding_spin_still_spins_then_parks() {
        // A budget far above the sleep: no park even if the thread is descheduled a while.
        let ex = Builder::new().spin_budget(Duration::from_secs(2)).spin_yield(true).build().unwrap();
        ex.block_on(async { crate::time::sleep(Duration::from_millis(10)).await });
        let s = ex.stats();
        // Yielding gives the core to other threads (tests run in parallel on two cores), so
        // the loop may turn only a few times: what shows it spins is that it never parked.
        assert!(s.iterations >= 2, "did not loop: {s:?}");
        assert_eq!(s.parks, 0, "parked within the spin budget: {s:?}");
        ex.block_on(async {
            set_spin_budget(Duration::from_millis(1));
            crate::time::sleep(Duration::from_millis(50)).await;
        });
        assert!(ex.stats().parks > 0, "never parked after the budget: {:?}", ex.stats());
    }

    #[test]
    fn spin_budget_spins_before_parking() {
        let ex = Builder::new().spin_budget(Duration::from_millis(50)).build().unwrap();
        ex.block_on(crate::time::sleep(Duration::from_millis(20)));
        let s = ex.stats();
        assert!(s.iterations > 1000, "did not spin: {s:?}");
        assert_eq!(s.parks, 0, "parked within the spin budget: {s:?}");
    }
}
