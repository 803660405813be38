//! Shared pieces of the benchmark programs in `src/bin/`.
//!
//! Every program prints one JSON object per result line:
//! `{"bench": NAME, "case": "...", "metric": "...", "value": N, "unit": "..."}`, plus `"baseline"`
//! and `"ratio"` where it measured a baseline (raw socket, memcpy, fsync) in the same run. Cases
//! name the transport and size (`tcp-64kib`). `--quick` keeps a run under a minute. A program
//! that checks targets ends with one line per target it measured, carrying `"threshold"` and
//! `"met"`.
//!
//! # Layout
//!
//! * [`Record`]: one result line and its JSON form, with an optional baseline (and ratio) or
//!   target (threshold and whether it was met).
//! * [`percentile`], [`median`]: summaries of samples and of repeated runs.
//! * [`pin`], [`two_cores`]: placing the two processes of a benchmark on their cores.
//! * [`ChildGuard`]: the benchmark's child process (the same program), killed and reaped on drop.
//! * [`MemberProcesses`]: the member processes of a group benchmark, their output and commands.
//! * [`arg`], [`flag`]: the few command-line options the programs take.
//! * [`raw`]: the baselines (plain sockets, `memcpy`) and their child processes.

pub mod raw;
pub mod sink;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One result line.
#[derive(Clone, Debug)]
pub struct Record {
    /// The benchmark program.
    pub bench: &'static str,
    /// Transport, size and mode.
    pub case: String,
    /// What was measured (`throughput`, `rtt_p50`, ...).
    pub metric: &'static str,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The same metric of the baseline, measured in the same run.
    pub baseline: Option<f64>,
    /// The target `value` is checked against, in `unit`.
    pub threshold: Option<f64>,
    /// Whether `value` met `threshold` (the comparison depends on the target).
    pub met: Option<bool>,
}

impl Record {
    /// A record without baseline.
    pub fn new(
        bench: &'static str,
        case: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self { bench, case: case.into(), metric, value, unit, baseline: None, threshold: None, met: None }
    }

    /// Adds the baseline (the ratio is `value / baseline`).
    pub fn with_baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// Adds a target: its threshold and whether `value` met it.
    pub fn with_target(mut self, threshold: f64, met: bool) -> Self {
        self.threshold = Some(threshold);
        self.met = Some(met);
        self
    }

    /// Prints the JSON line.
    pub fn print(&self) {
        let mut o = serde_json::json!({
            "bench": self.bench,
            "case": self.case,
            "metric": self.metric,
            "value": round(self.value),
            "unit": self.unit,
        });
        if let Some(b) = self.baseline {
            o["baseline"] = serde_json::json!(round(b));
            o["ratio"] = serde_json::json!(if b == 0.0 { 0.0 } else { round(self.value / b) });
        }
        if let Some(t) = self.threshold {
            o["threshold"] = serde_json::json!(round(t));
        }
        if let Some(m) = self.met {
            o["met"] = serde_json::json!(m);
        }
        println!("{o}");
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 { (v * 10.0).round() / 10.0 } else { (v * 1000.0).round() / 1000.0 }
}

/// Percentile (0..=100) of samples, in the samples' unit.
///
/// # Panics
///
/// If `samples` is empty.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The median of a few repeated measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 50.0)
}

/// Pins the calling thread to `core`; returns whether it could.
pub fn pin(core: usize) -> bool {
    if core >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: zeroed cpu_set_t is an empty set; CPU_SET writes a bit below CPU_SETSIZE (checked
    // above); sched_setaffinity reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The cores for the two processes of a two-process benchmark: different ones when the machine
/// has two, else the same one (reported on stderr).
pub fn two_cores() -> (usize, usize) {
    let cores = derecho_runtime::available_cores();
    match cores.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => {
            eprintln!("note: one core only; both processes share core {a}");
            (*a, *a)
        }
        [] => (0, 0),
    }
}

/// A child process that is killed and reaped when dropped, whatever happened.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Starts this same program with `args`.
    ///
    /// # Panics
    ///
    /// If the program cannot be started.
    pub fn spawn_self(args: &[String]) -> Self {
        Self::spawn_self_with(args, Stdio::inherit())
    }

    /// As [`ChildGuard::spawn_self`], with the child's standard output going to `stdout`
    /// (`Stdio::piped()` to read what it prints).
    ///
    /// # Panics
    ///
    /// If the program cannot be started.
    pub fn spawn_self_with(args: &[String], stdout: Stdio) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child process");
        Self(Some(child))
    }

    /// Waits (bounded) for the child to exit and checks its status.
    ///
    /// # Panics
    ///
    /// If it fails or does not exit in time.
    pub fn finish(mut self, within: Duration) {
        let mut child = self.0.take().expect("child");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                assert!(status.success(), "child process failed: {status}");
                return;
            }
            if start.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A name no other run or call of this program uses: `{prefix}{pid}-{tag}-{n}` (shared-memory
/// namespaces, temporary files).
pub fn unique_name(prefix: &str, tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Reads `--name value` from `args`.
pub fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// Whether `--flag` is present.
pub fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

/// The library's logs on standard error, filtered by `RUST_LOG` (for example
/// `RUST_LOG=derecho=debug`), `DERECHO_LOG_FORMAT=json` for JSON. Unset, only warnings and
/// errors: a benchmark's member processes would otherwise interleave their view changes with the
/// results.
pub fn log_from_env() {
    derecho::logging::init_default("warn");
}

/// The member processes of a group benchmark: this program started once per member with
/// `--child member ...`, each one's standard output read line by line (tagged with its id) and
/// its standard input kept for commands (`go`, `exit`).
pub struct MemberProcesses {
    children: Vec<ChildGuard>,
    stdins: Vec<std::process::ChildStdin>,
    tx: std::sync::mpsc::Sender<(u32, String)>,
    rx: std::sync::mpsc::Receiver<(u32, String)>,
    /// The case, for messages.
    case: String,
    /// The bound on each wait.
    bound: Duration,
}

impl std::fmt::Debug for MemberProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberProcesses").field("case", &self.case).field("members", &self.children.len()).finish()
    }
}

impl MemberProcesses {
    /// No member yet; every [`MemberProcesses::wait`] of `case` is bounded by `bound`.
    pub fn new(case: impl Into<String>, bound: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self { children: Vec::new(), stdins: Vec::new(), tx, rx, case: case.into(), bound }
    }

    /// Starts member `id`: this program with `--child member` and `args`.
    ///
    /// # Panics
    ///
    /// If the program cannot be started.
    pub fn spawn(&mut self, id: u32, args: &[String]) {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args(["--child", "member"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a member");
        self.stdins.push(child.stdin.take().expect("piped"));
        let out = child.stdout.take().expect("piped");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((id, line));
            }
        });
        self.children.push(ChildGuard(Some(child)));
    }

    /// Waits for a line (from member `id`) that `pred` accepts, and returns it.
    ///
    /// # Panics
    ///
    /// If none comes within the bound.
    pub fn wait(&self, what: &str, mut pred: impl FnMut(u32, &str) -> bool) -> String {
        let deadline = std::time::Instant::now() + self.bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (id, line) = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: no {what} within {:?}", self.case, self.bound));
            if pred(id, &line) {
                return line;
            }
        }
    }

    /// Sends `line` to every member's standard input.
    ///
    /// # Panics
    ///
    /// If a member's input is closed (it exited).
    pub fn tell_all(&mut self, line: &str) {
        use std::io::Write;
        for s in &mut self.stdins {
            writeln!(s, "{line}").expect("tell a member");
        }
    }

    /// Tells every member to exit, closes their input and waits (bounded) for each.
    ///
    /// # Panics
    ///
    /// If a member fails or does not exit within `within`.
    pub fn finish(mut self, within: Duration) {
        use std::io::Write;
        for s in &mut self.stdins {
            let _ = writeln!(s, "exit");
        }
        self.stdins.clear();
        for c in std::mem::take(&mut self.children) {
            c.finish(within);
        }
    }
}

/// A member process's executor: pinned to the core `--core` names (unpinned without it),
/// spinning `spin` before it parks.
///
/// # Panics
///
/// If `--core` is not a number or the executor cannot be built.
pub fn member_executor(args: &[String], spin: Duration) -> derecho::LocalExecutor {
    let b = derecho::Builder::new().spin_budget(spin);
    let b = match arg(args, "--core").map(|c| c.parse::<usize>().expect("a core")) {
        Some(c) => b.pin_to_core(c),
        None => b.placement(derecho::Placement::Unpinned),
    };
    b.build().expect("executor")
}

/// The group settings of the call benchmarks: messages up to 16 KiB, 4 MiB rings, and a
/// suspicion timeout of 2 s (busy members share two cores: one descheduled for a while must not
/// be suspected; these benchmarks measure throughput, not failure detection).
pub fn call_bench_settings() -> (derecho::protocol::Limits, derecho::protocol::MembershipConfig) {
    let limits = derecho::protocol::Limits { payload_len_max: 16 << 10, ring_len: 4 << 20, ..Default::default() };
    let membership =
        derecho::protocol::MembershipConfig { suspect_after: Duration::from_secs(2), ..Default::default() };
    (limits, membership)
}

/// A member process's commands from its parent ([`MemberProcesses`]), read from standard input
/// by a thread: 0 before `go`, 1 after it, 2 after `exit` or the end of input.
#[derive(Clone, Debug)]
pub struct Commands(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl Commands {
    /// Starts reading standard input.
    pub fn from_stdin() -> Self {
        use std::io::BufRead;
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let s = state.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                match line.as_str() {
                    "go" => s.store(1, Ordering::Release),
                    "exit" => s.store(2, Ordering::Release),
                    _ => {}
                }
            }
            s.store(2, Ordering::Release);
        });
        Self(state)
    }

    /// Blocks the thread (polling every millisecond) until `go` (1) or `exit` (2) came: for
    /// processes without a derecho executor.
    pub fn block_until(&self, at_least: u8) {
        while self.0.load(std::sync::atomic::Ordering::Acquire) < at_least {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits (polling every millisecond on the executor) until `go` (1) or `exit` (2) came.
    pub async fn wait_for(&self, at_least: u8) {
        while self.0.load(std::sync::atomic::Ordering::Acquire) < at_least {
            derecho::runtime::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
