//! Running simulations under the checkers, choosing seeds, and printing how to replay a failure.
//!
//! Environment variables, read by every simulation test:
//!
//! * `SIM_SEED=<n>` (decimal or `0x` hex): run exactly this seed instead of the test's fixed or
//!   fresh seeds.
//! * `SIM_SEEDS=<count>`: how many fresh seeds the fresh-seed tests run; setting it lifts their
//!   wall-clock bound.
//! * `SIM_TRACE=1`: keep every trace line and print the whole trace of a failing run to stderr.
//!
//! Every failure message ends with the command that replays it, e.g.
//! `SIM_SEED=7 cargo test -p derecho-tests --test sim_multicast three_members_all_senders_ordered`.
//! A seed fixes everything: the layout choices, the workload, every latency; the same seed
//! replays the same run, step for step.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use derecho::protocol::Time;
use derecho::sim::{ConfigError, Failure, Outcome, Sim, SimConfig, SimRng};

use crate::checkers::{CheckFailure, Checkers, Property};

/// Replays one seed.
pub const SEED_VAR: &str = "SIM_SEED";
/// Overrides the number of fresh seeds.
pub const SEEDS_VAR: &str = "SIM_SEEDS";
/// Prints whole traces of failing runs.
pub const TRACE_VAR: &str = "SIM_TRACE";

pub(crate) fn parse_u64(var: &str) -> Option<u64> {
    let text = std::env::var(var).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{var}={text} is not a number: {e}")))
}

/// The seed `SIM_SEED` asks to replay, if any.
///
/// # Panics
///
/// If `SIM_SEED` is set to something that is not a number.
pub fn replay_seed() -> Option<u64> {
    parse_u64(SEED_VAR)
}

pub(crate) fn full_trace_wanted() -> bool {
    std::env::var(TRACE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How a run ended, judged by the checkers.
#[derive(Debug)]
pub enum Verdict {
    /// Every safety and liveness property held.
    Clean,
    /// A safety checker failed after some step; the run stopped there.
    Unsafe(Failure),
    /// The protocol or the simulator panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// The step during which it panicked.
        step: u64,
        /// Virtual time then.
        time: Time,
        /// The last trace lines.
        trace_tail: Vec<String>,
    },
    /// The run finished, and checks at its end failed (liveness, or safety on the last state).
    Failed(Vec<CheckFailure>),
    /// The configuration cannot run.
    Invalid(ConfigError),
}

impl Verdict {
    /// Whether nothing failed.
    pub fn is_clean(&self) -> bool {
        matches!(self, Verdict::Clean)
    }

    /// Whether the only failures are liveness failures reported at the end of the run.
    pub fn is_liveness_only(&self) -> bool {
        match self {
            Verdict::Failed(f) => f.iter().all(|f| f.property == Property::Liveness),
            _ => false,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Clean => write!(f, "clean"),
            Verdict::Unsafe(failure) => write!(f, "safety violation: {failure}"),
            Verdict::Panicked { message, step, time, trace_tail } => {
                writeln!(f, "panicked during step {step} at t={}ns: {message}", time.0)?;
                writeln!(f, "last {} trace lines:", trace_tail.len())?;
                for line in trace_tail {
                    writeln!(f, "  {line}")?;
                }
                Ok(())
            }
            Verdict::Failed(failures) => {
                write!(f, "failed at the end of the run:")?;
                for failure in failures {
                    write!(f, "\n  {failure}")?;
                }
                Ok(())
            }
            Verdict::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// One seed's run.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// What the checkers said.
    pub verdict: Verdict,
    /// How the run ended, if it ended without a failure during it.
    pub outcome: Option<Outcome>,
    /// The simulation as it stopped (absent if the configuration was invalid).
    pub sim: Option<Sim>,
    /// Wall-clock time of the run.
    pub wall: Duration,
}

impl Report {
    /// The simulation, which exists unless the configuration was invalid.
    ///
    /// # Panics
    ///
    /// If the configuration was invalid.
    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("the configuration was valid")
    }
}

/// A simulation test: the test binary and test name that replay it.
#[derive(Clone, Copy, Debug)]
pub struct SimTest {
    /// The integration test target (`tests/<target>.rs`).
    pub target: &'static str,
    /// The test function's name.
    pub name: &'static str,
}

impl SimTest {
    /// The test `name` in `tests/<target>.rs`.
    pub const fn new(target: &'static str, name: &'static str) -> Self {
        Self { target, name }
    }

    /// The command that replays `seed` of this test.
    pub fn replay(&self, seed: u64) -> String {
        format!("{SEED_VAR}={seed} cargo test -p derecho-tests --test {} {}", self.target, self.name)
    }

    /// The seeds to run: the one `SIM_SEED` names if set, else `fixed`.
    pub fn seeds(&self, fixed: &[u64]) -> Vec<u64> {
        replay_seed().map_or_else(|| fixed.to_vec(), |seed| vec![seed])
    }

    /// Runs `config` under every checker; never panics because the protocol did.
    pub fn run(&self, mut config: SimConfig) -> Report {
        let seed = config.seed;
        let full_trace = full_trace_wanted();
        config.record_trace |= full_trace;
        let started = Instant::now();
        let mut sim = match Sim::new(config) {
            Ok(sim) => sim,
            Err(e) => {
                return Report {
                    seed,
                    verdict: Verdict::Invalid(e),
                    outcome: None,
                    sim: None,
                    wall: started.elapsed(),
                };
            }
        };
        let mut checkers = Checkers::all();
        let result = catch_unwind(AssertUnwindSafe(|| sim.run(|sim| checkers.check(sim))));
        let (verdict, outcome) = match result {
            Ok(Ok(outcome)) => {
                let failures = checkers.finish(&sim, &outcome);
                let verdict = if failures.is_empty() { Verdict::Clean } else { Verdict::Failed(failures) };
                (verdict, Some(outcome))
            }
            Ok(Err(failure)) => (Verdict::Unsafe(failure), None),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                let trace_tail = sim.trace().tail().map(str::to_string).collect();
                (Verdict::Panicked { message, step: sim.steps(), time: sim.now(), trace_tail }, None)
            }
        };
        if full_trace && !verdict.is_clean() {
            eprintln!("---- full trace of {} seed {seed} ----", self.name);
            for line in sim.trace().lines().unwrap_or_default() {
                eprintln!("{line}");
            }
            eprintln!("---- end of trace ----");
        }
        Report { seed, verdict, outcome, sim: Some(sim), wall: started.elapsed() }
    }

    /// Runs `config` and requires a clean verdict.
    ///
    /// # Panics
    ///
    /// On any failure, with the replay command.
    pub fn run_clean(&self, config: SimConfig) -> Report {
        let report = self.run(config);
        assert!(report.verdict.is_clean(), "{}", self.failure(&report, "must be clean"));
        report
    }

    /// Runs every seed of [`SimTest::seeds`]`(fixed)`, each configured by `make`, requiring
    /// clean verdicts; returns the reports.
    ///
    /// # Panics
    ///
    /// At the first failure, with the replay command.
    pub fn run_seeds(&self, fixed: &[u64], make: impl Fn(u64) -> SimConfig) -> Vec<Report> {
        self.seeds(fixed).into_iter().map(|seed| self.run_clean(make(seed))).collect()
    }

    /// A failure message about `report`: what was expected, the verdict, and the replay command.
    pub fn failure(&self, report: &Report, expected: &str) -> String {
        format!(
            "{} seed {} {expected}, but: {}\nreplay: {}{}",
            self.name,
            report.seed,
            report.verdict,
            self.replay(report.seed),
            if full_trace_wanted() { String::new() } else { format!("  (add {TRACE_VAR}=1 for the whole trace)") }
        )
    }
}

/// What a batch of fresh seeds did.
#[derive(Clone, Debug)]
pub struct FreshSummary {
    /// The number the seeds were drawn from.
    pub base: u64,
    /// Seeds run.
    pub seeds: u64,
    /// Simulation steps, summed.
    pub steps: u64,
    /// Wall-clock time.
    pub wall: Duration,
}

impl fmt::Display for FreshSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.wall.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} seeds from base {:#x} in {:.2} s: {:.1} seeds/s, {} steps ({:.0} steps/s)",
            self.seeds,
            self.base,
            secs,
            self.seeds as f64 / secs,
            self.steps,
            self.steps as f64 / secs
        )
    }
}

/// Runs fresh seeds, drawn from the system time (here, outside the simulator), until
/// `default_count` seeds ran or `time_box` passed. `SIM_SEEDS` overrides the count and lifts the
/// time bound; `SIM_SEED` runs that one seed. Each seed's configuration comes from `make`.
///
/// # Panics
///
/// At the first seed whose verdict is not clean, with its replay command.
pub fn run_fresh_seeds(
    test: &SimTest,
    default_count: u64,
    time_box: Duration,
    make: impl Fn(u64) -> SimConfig,
) -> FreshSummary {
    let started = Instant::now();
    let (base, count, bounded) = match (replay_seed(), parse_u64(SEEDS_VAR)) {
        (Some(seed), _) => (seed, 1, false),
        (None, Some(count)) => (clock_seed(), count, false),
        (None, None) => (clock_seed(), default_count, true),
    };
    let mut seeds = SimRng::new(base);
    let mut summary = FreshSummary { base, seeds: 0, steps: 0, wall: Duration::ZERO };
    println!("{}: fresh seeds drawn from base {base:#x} (each failure prints its replay command)", test.name);
    for _ in 0..count {
        if bounded && started.elapsed() >= time_box {
            break;
        }
        let seed = if replay_seed().is_some() { base } else { seeds.next_u64() };
        let report = test.run(make(seed));
        assert!(report.verdict.is_clean(), "{}", test.failure(&report, "must be clean"));
        summary.seeds += 1;
        summary.steps += report.sim().steps();
    }
    summary.wall = started.elapsed();
    println!("{}: {summary}", test.name);
    summary
}

/// A seed from the system clock: the only clock read of a simulation test, outside the simulator.
pub(crate) fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    // Mix so that runs a nanosecond apart draw unrelated seeds.
    SimRng::new(now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).next_u64()
}
