//! Executors: one per core, pinned; spinning, then parking.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use derecho::runtime::executor::{ExecutorThread, LoopStats};
use derecho::runtime::time;
use derecho::{Builder, Placement, RuntimeError, available_cores, spawn};

// ANCHOR: per_core
/// Starts one executor thread on each core this process may use, runs four small tasks on each,
/// and returns what each executor computed.
///
/// # Errors
///
/// [`RuntimeError`] if an executor cannot start (a core that vanished, no io_uring).
pub fn one_executor_per_core() -> Result<Vec<u64>, RuntimeError> {
    let mut threads: Vec<ExecutorThread<u64>> = Vec::new();
    for core in available_cores() {
        let thread = Builder::new()
            .name(format!("executor-{core}"))
            .placement(Placement::Core(core))
            .spin_budget(Duration::from_micros(50))
            .spawn_thread(|| async {
                // The tasks never leave this thread, so they may share an `Rc`: no `Send`,
                // no locks, no atomics.
                let sum = Rc::new(Cell::new(0));
                let tasks: Vec<_> = (1..=4)
                    .map(|i| {
                        let sum = sum.clone();
                        spawn(async move { sum.set(sum.get() + i) })
                    })
                    .collect();
                for task in tasks {
                    task.await;
                }
                sum.get()
            })?;
        threads.push(thread);
    }
    threads.into_iter().map(ExecutorThread::join).collect()
}
// ANCHOR_END: per_core

// ANCHOR: spin_then_park
/// Runs an executor that has nothing to do for 2 ms, and returns its loop counters.
///
/// # Errors
///
/// [`RuntimeError`] if the executor cannot start.
pub fn idle_for_2_ms(spin_budget: Duration) -> Result<LoopStats, RuntimeError> {
    let executor = Builder::new().spin_budget(spin_budget).build()?;
    executor.block_on(time::sleep(Duration::from_millis(2)));
    Ok(executor.stats())
}
// ANCHOR_END: spin_then_park

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_runs_its_tasks() {
        let sums = one_executor_per_core().unwrap();
        assert_eq!(sums.len(), available_cores().len());
        assert!(sums.iter().all(|&s| s == 1 + 2 + 3 + 4), "{sums:?}");
    }

    #[test]
    fn zero_budget_parks_and_a_long_budget_spins() {
        let parked = idle_for_2_ms(Duration::ZERO).unwrap();
        assert!(parked.parks >= 1, "never parked: {parked:?}");
        assert!(parked.iterations < 100, "busy-waited with a zero budget: {parked:?}");
        let spun = idle_for_2_ms(Duration::from_millis(50)).unwrap();
        assert_eq!(spun.parks, 0, "parked within its budget: {spun:?}");
        assert!(spun.iterations > parked.iterations, "{spun:?} vs {parked:?}");
    }
}
