//! Termination signals (SIGTERM, SIGINT) as events a task awaits, for a graceful shutdown.
//!
//! [`Signals::termination`] blocks the two signals in the calling thread (and so in every thread
//! it starts afterwards: call it at the start of `main`, before other threads exist) and reads
//! them from a `signalfd` on the executor. A signal then never kills the process by itself: the
//! program decides what to do (leave its group, then exit), and a second signal can still end it
//! at once if the program says so.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// SIGTERM and SIGINT, delivered to a task instead of killing the process.
#[derive(Debug)]
pub struct Signals {
    fd: OwnedFd,
}

/// A signal received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM (`kill`, a service manager stopping the program).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: `sigemptyset` initialises the set it is given; the others add to an initialised set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

impl Signals {
    /// Blocks SIGTERM and SIGINT in this thread (and threads it starts from now on) and opens a
    /// descriptor that receives them.
    ///
    /// # Errors
    ///
    /// The OS error of `pthread_sigmask` or `signalfd`.
    pub fn termination() -> io::Result<Self> {
        let set = termination_set();
        // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `signalfd` returned a new descriptor that nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The next signal; must run on an executor.
    ///
    /// # Errors
    ///
    /// The OS error of reading the descriptor.
    pub async fn next(&self) -> io::Result<Signal> {
        loop {
            if let Some(s) = self.try_next()? {
                return Ok(s);
            }
            crate::op::poll_readable(self.fd.as_raw_fd()).await?;
        }
    }

    /// A signal already pending, without waiting.
    ///
    /// # Errors
    ///
    /// The OS error of reading the descriptor.
    pub fn try_next(&self) -> io::Result<Option<Signal>> {
        loop {
            // SAFETY: all-zero bytes are a valid `signalfd_siginfo` (plain integers).
            let mut info = unsafe { std::mem::zeroed::<libc::signalfd_siginfo>() };
            let len = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), len) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            return Ok(match info.ssi_signo as i32 {
                libc::SIGTERM => Some(Signal::Terminate),
                libc::SIGINT => Some(Signal::Interrupt),
                _ => continue,
            });
        }
    }
}
