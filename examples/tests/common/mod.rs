//! Helpers shared by the example tests.

pub mod netns;

/// Child processes, killed and reaped when dropped (also when a test panics).
pub struct Members(pub Vec<std::process::Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
