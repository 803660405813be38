//! `group-demo`: a replicated service whose membership changes while it runs.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin group-demo [-- --count N --rate R]
//! ```
//!
//! Run without `--member`, this process is the *launcher*. It starts member 0 (which starts the
//! group) and members 1 and 2 (which join it), all sending ordered messages; once a quarter of
//! them are delivered it kills member 2 with SIGKILL, waits for the survivors' next view, and
//! starts member 3, which joins through member 1 (redirected to the leader) and receives the
//! application's state. At the end it reads every member's delivery log and checks virtual
//! synchrony as a user can see it: the survivors delivered identical sequences, the killed
//! member a prefix of them, the joiner exactly their suffix from its first view, and every
//! survivor ended with the same digest of the whole history. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use derecho::available_cores;
use derecho_examples::group::{Command as Cli, Options, Summary, log_path, parse_args, run_member};

fn main() -> ExitCode {
    derecho::logging::init();
    // Usage errors exit 2 with clap's message; --help prints the help and exits 0.
    let command = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    match command {
        Cli::Member(o) => match run_member(&o) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("group-demo member: error: {e}");
                ExitCode::FAILURE
            }
        },
        Cli::Launch(o) => match launch(o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("group-demo: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// How long the whole scenario may take beyond sending.
const SLACK: Duration = Duration::from_secs(120);

/// The member processes, killed and reaped when dropped, whatever happened.
struct Members {
    children: Vec<(u32, Child)>,
    lines: mpsc::Sender<(u32, Option<String>)>,
}

impl Members {
    fn start(&mut self, exe: &Path, id: u32, args: Vec<String>) -> Result<(), String> {
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", derecho_examples::child_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start member {id}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let tx = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((id, Some(line)));
            }
            let _ = tx.send((id, None));
        });
        println!("launcher: started member {id} (pid {})", child.id());
        self.children.push((id, child));
        Ok(())
    }

    fn child(&mut self, id: u32) -> &mut Child {
        &mut self.children.iter_mut().find(|(i, _)| *i == id).expect("a started member").1
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Free loopback ports for the members (held together so that no two are the same).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free ports: {e}"))?;
    ls.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// What the launcher waits for next.
#[derive(Debug, PartialEq)]
enum Phase {
    /// Members 0, 1, 2 in one view, then a quarter of the messages delivered at member 0.
    Running,
    /// Member 2 killed: members 0 and 1 install a view without it.
    Killed,
    /// Member 3 started: everyone runs to the end.
    Joined,
}

fn launch(mut o: Options) -> Result<(), String> {
    let log_dir = match &o.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("derecho-group-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    o.log_dir = Some(log_dir.clone());
    // Development mode: a throw-away authority and the members' certificates, next to the logs.
    // Every connection between the members runs mutual TLS.
    let tls_dir = log_dir.join("tls");
    let ca = derecho::runtime::tls::DevCa::new().map_err(|e| e.to_string())?;
    ca.write_nodes(&tls_dir, 0..4).map_err(|e| e.to_string())?;
    let ports = free_ports(4)?;
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let cores = available_cores();
    let core = |i: usize| (!o.unpinned && !cores.is_empty()).then(|| cores[i % cores.len()]);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    println!(
        "derecho group: 3 members on loopback TCP (mutual TLS) sending {} messages each at {}/s; one is killed, a fourth joins",
        o.count, o.rate
    );
    let (tx, rx) = mpsc::channel();
    let mut members = Members { children: Vec::new(), lines: tx };
    let member_args = |i: usize, contact: Option<usize>| {
        let mut extra = vec![
            format!("me={i}"),
            format!("listen=\"{}\"", addr(i)),
            format!("tls.dir={:?}", tls_dir.display().to_string()),
        ];
        if let Some(c) = contact {
            extra.push(format!("contact=\"{}\"", addr(c)));
        }
        if let Some(c) = core(i) {
            extra.push(format!("core={c}"));
        }
        o.member_args(&extra)
    };
    members.start(&exe, 0, member_args(0, None))?;
    members.start(&exe, 1, member_args(1, Some(0)))?;
    members.start(&exe, 2, member_args(2, Some(0)))?;

    let deadline = Instant::now() + Duration::from_secs_f64(o.count as f64 / o.rate as f64) * 2 + SLACK;
    let quarter = o.count * 3 / 4;
    let mut phase = Phase::Running;
    let mut summaries: Vec<Summary> = Vec::new();
    let mut open = 3;
    let mut survivors_in_next_view = Vec::new();
    let mut killed_at = Instant::now();
    let mut join_started = Instant::now();
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, line) = rx.recv_timeout(left).map_err(|_| "members still running at the deadline".to_string())?;
        let Some(line) = line else {
            open -= 1;
            if phase != Phase::Running && id == 2 {
                continue; // the killed member
            }
            let status = members.child(id).wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("member {id} exited with {status}; stopping the others"));
            }
            continue;
        };
        if let Some(s) = Summary::parse(&line) {
            summaries.push(s);
            continue;
        }
        println!("{line}");
        match phase {
            Phase::Running if id == 0 && delivered_of(&line).is_some_and(|d| d >= quarter) => {
                members.child(2).kill().map_err(|e| format!("cannot kill member 2: {e}"))?;
                killed_at = Instant::now();
                println!("launcher: killed member 2 (SIGKILL)");
                phase = Phase::Killed;
            }
            Phase::Killed if (id == 0 || id == 1) && line.contains("members [0,1] ") => {
                survivors_in_next_view.push((id, line.clone()));
                if survivors_in_next_view.len() == 2 {
                    println!(
                        "launcher: both survivors installed a view without member 2, {:.1} ms after the kill",
                        killed_at.elapsed().as_secs_f64() * 1e3
                    );
                    // Member 3 asks member 1, which is not the leader: it is redirected.
                    join_started = Instant::now();
                    members.start(&exe, 3, member_args(3, Some(1)))?;
                    open += 1;
                    phase = Phase::Joined;
                }
            }
            Phase::Joined if id == 3 && line.contains(": in the group") => {
                let ms = join_started.elapsed().as_secs_f64() * 1e3;
                println!("launcher: member 3 joined {ms:.1} ms after its process started");
            }
            _ => {}
        }
    }
    if phase != Phase::Joined {
        return Err(format!("the run ended before the scenario did (at {phase:?})"));
    }
    drop(members);
    verdict(&summaries, &log_dir)
}

/// The delivered count in a progress line `member N: sent S, delivered D (view V)`.
fn delivered_of(line: &str) -> Option<u64> {
    line.split("delivered ").nth(1)?.split_whitespace().next()?.parse().ok()
}

fn read_log(dir: &Path, id: u32) -> Result<Vec<String>, String> {
    let p: PathBuf = log_path(dir, id);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    // A member killed while writing leaves a partial last line: only whole lines count.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(whole.lines().map(str::to_string).collect())
}

/// Checks the summaries and the delivery logs.
fn verdict(summaries: &[Summary], dir: &Path) -> Result<(), String> {
    let of = |id: u32| summaries.iter().find(|s| s.me == id).ok_or(format!("no summary from member {id}"));
    let (a, b, d) = (of(0)?, of(1)?, of(3)?);
    for s in [b, d] {
        if (s.delivered, s.digest) != (a.delivered, a.digest) {
            return Err(format!("members disagree: {a} but {s}"));
        }
    }
    let logs: Vec<Vec<String>> = (0..4).map(|i| read_log(dir, i)).collect::<Result<_, _>>()?;
    if logs[0] != logs[1] {
        return Err("members 0 and 1 delivered different sequences".into());
    }
    if !logs[0].starts_with(&logs[2]) {
        return Err("the killed member delivered something the survivors did not, or in another order".into());
    }
    let first_view = logs[3].first().map(|l| l.split(' ').next().unwrap_or("").to_string()).unwrap_or_default();
    let from = logs[0].iter().position(|l| l.starts_with(&format!("{first_view} "))).unwrap_or(logs[0].len());
    if logs[3] != logs[0][from..] {
        return Err(format!("the joiner's deliveries are not the survivors' from its first view {first_view}"));
    }
    println!(
        "\nlauncher: members 0, 1 and 3 delivered the same {} messages (digest {:016x}); the killed member's {} \
         deliveries are a prefix of theirs; the joiner delivered their last {} after receiving the state of the first {}",
        a.delivered,
        a.digest,
        logs[2].len(),
        logs[3].len(),
        a.delivered - logs[3].len() as u64
    );
    println!("launcher: delivery logs in {}", dir.display());
    Ok(())
}
