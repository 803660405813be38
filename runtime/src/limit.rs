//! Rate-limited warnings: a listener under attack refuses thousands of connections a second,
//! and a line for each would drown the log (and cost more than the refusal).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lets through at most `per_window` warnings per window; counts the others, so the next line
/// let through can say how many were left out.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    per_window: u32,
    started: Cell<Option<Instant>>,
    let_through: Cell<u32>,
    left_out: Cell<u64>,
}

impl LogLimiter {
    /// At most `per_window` lines per `window`.
    pub const fn new(window: Duration, per_window: u32) -> Self {
        Self { window, per_window, started: Cell::new(None), let_through: Cell::new(0), left_out: Cell::new(0) }
    }

    /// Whether to log one more line now: `Some(n)` with the number of lines left out since the
    /// last one let through, `None` to stay quiet.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        if self.started.get().is_none_or(|s| now.duration_since(s) >= self.window) {
            self.started.set(Some(now));
            self.let_through.set(0);
        }
        if self.let_through.get() >= self.per_window {
            self.left_out.set(self.left_out.get() + 1);
            return None;
        }
        self.let_through.set(self.let_through.get() + 1);
        Some(self.left_out.replace(0))
    }
}

impl Default for LogLimiter {
    /// Ten lines a second.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_window_budget_are_counted_and_reported_with_the_next() {
        let l = LogLimiter::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
