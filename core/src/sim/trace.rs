//! The simulation's trace: one line per event, folded into a hash (so a test can compare whole
//! runs cheaply), the last lines kept for failure reports, and every line kept on request.

use std::collections::VecDeque;
use std::fmt;

/// Lines kept for failure reports when the full trace is not recorded.
pub const TRACE_TAIL_LEN: usize = 64;

/// Every event of a run, as text.
///
/// # Examples
///
/// ```
/// use derecho::sim::Trace;
///
/// let mut a = Trace::new(true);
/// let mut b = Trace::new(false);
/// for t in [&mut a, &mut b] {
///     t.record(format_args!("t=0 send n11"));
/// }
/// assert_eq!(a.hash(), b.hash());
/// assert_eq!(a.lines().unwrap(), ["t=0 send n11"]);
/// assert!(b.lines().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    len: u64,
    tail: VecDeque<String>,
    lines: Option<Vec<String>>,
}

impl Trace {
    /// An empty trace; `keep_lines` keeps every line (memory grows with the run).
    pub fn new(keep_lines: bool) -> Self {
        Self {
            hash: crate::hash::Fnv64::new().finish(),
            len: 0,
            tail: VecDeque::with_capacity(TRACE_TAIL_LEN),
            lines: keep_lines.then(Vec::new),
        }
    }

    /// Appends one line.
    pub fn record(&mut self, line: fmt::Arguments<'_>) {
        let line = line.to_string();
        // FNV-1a, 64 bits, over the line and a separator.
        self.hash = crate::hash::Fnv64::from_state(self.hash).write(line.as_bytes()).write(b"\n").finish();
        self.len += 1;
        if self.tail.len() == TRACE_TAIL_LEN {
            self.tail.pop_front();
        }
        if let Some(lines) = &mut self.lines {
            lines.push(line.clone());
        }
        self.tail.push_back(line);
    }

    /// A hash of every line so far, in order: equal traces have equal hashes.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Lines recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last [`TRACE_TAIL_LEN`] lines.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }

    /// Every line, when the trace was created to keep them.
    pub fn lines(&self) -> Option<&[String]> {
        self.lines.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_content_and_order_and_the_tail_is_bounded() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(false);
        a.record(format_args!("x"));
        a.record(format_args!("y"));
        b.record(format_args!("y"));
        b.record(format_args!("x"));
        assert_ne!(a.hash(), b.hash());
        // "ab" then "c" differs from "a" then "bc": lines are separated in the hash.
        let (mut c, mut d) = (Trace::new(false), Trace::new(false));
        c.record(format_args!("ab"));
        c.record(format_args!("c"));
        d.record(format_args!("a"));
        d.record(format_args!("bc"));
        assert_ne!(c.hash(), d.hash());
        for i in 0..200 {
            a.record(format_args!("{i}"));
        }
        assert_eq!(a.len(), 202);
        assert_eq!(a.tail().count(), TRACE_TAIL_LEN);
        assert_eq!(a.tail().last(), Some("199"));
    }
}
