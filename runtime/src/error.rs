//! Errors of the runtime: starting executors and io_uring operations.

use std::io;

/// Why an executor could not be started or run.
///
/// These are operating errors (the machine cannot do what was asked), reported to the caller
/// instead of panicking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The requested core does not exist or is not in this process's CPU affinity mask.
    #[error("core {core} is not available to this process (available cores: {available:?})")]
    NoSuchCore {
        /// The core that was asked for.
        core: usize,
        /// The cores this process may run on.
        available: Vec<usize>,
    },
    /// Pinning the thread to its core failed.
    #[error("could not pin the executor thread to core {core}: {source}")]
    Pin {
        /// The core.
        core: usize,
        /// The error from `sched_setaffinity`.
        #[source]
        source: io::Error,
    },
    /// io_uring could not be set up.
    #[error(
        "io_uring is unavailable: {source}. derecho needs io_uring (Linux 5.19 or newer). \
         Check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in \
         the io_uring group) and, in a container, that the seccomp profile allows \
         io_uring_setup/io_uring_enter"
    )]
    IoUringUnavailable {
        /// The error from `io_uring_setup`.
        #[source]
        source: io::Error,
    },
    /// An `eventfd` for cross-thread wake-ups could not be created.
    #[error("could not create the executor's wake-up eventfd: {0}")]
    Eventfd(#[source] io::Error),
    /// `io_uring_enter` failed in the executor loop.
    #[error("io_uring_enter failed: {0}")]
    Enter(#[source] io::Error),
    /// The executor thread could not be spawned.
    #[error("could not spawn the executor thread: {0}")]
    Spawn(#[source] io::Error),
    /// The executor thread panicked.
    #[error("the executor thread panicked")]
    Panicked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_refusal_says_how_to_fix_it() {
        // io_uring cannot be switched off for one test on a shared machine; what the user reads
        // when it is off is checked here.
        let e = RuntimeError::IoUringUnavailable { source: io::Error::from_raw_os_error(libc::EPERM) };
        let msg = e.to_string();
        assert!(msg.contains("io_uring is unavailable"), "{msg}");
        assert!(msg.contains("kernel.io_uring_disabled"), "{msg}");
        assert!(msg.contains("seccomp"), "{msg}");
        assert!(msg.contains("Operation not permitted"), "{msg}");
    }
}
