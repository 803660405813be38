//! `multicast-demo`: a group of member processes on this machine, every member sending into one
//! ordered shard, every member printing what it delivers and how fast.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin multicast-demo [-- --count N --size BYTES --set transport=shm]
//! ```
//!
//! Run without `--member`, this process is the *launcher*: it reads the configuration file
//! (`examples/multicast.toml` unless `--config` names another), starts one copy of itself per
//! member with `--member --set me=ID --set core=N`, prints their output, and checks at the end
//! that every member delivered the same messages in the same order. Every wait is bounded; a
//! member that fails makes the launcher stop the others and exit with a non-zero status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use derecho::protocol::NodeId;
use derecho::{ShmTransport, available_cores};
use derecho_examples::multicast::{Command as Cli, DELIVERY_TIMEOUT, Options, SETTLE_TIMEOUT, Summary};
use derecho_examples::multicast::{parse_args, run_member};

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
                eprintln!("multicast-demo member: error: {e}");
                ExitCode::FAILURE
            }
        },
        Cli::Launch(o) => match launch(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("multicast-demo: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The member processes: killed and reaped, and their shared-memory files removed, when
/// dropped, whatever happened.
struct Members {
    children: Vec<(NodeId, Child)>,
    shm_namespace: String,
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ShmTransport::remove_namespace(std::path::Path::new("/dev/shm"), &self.shm_namespace);
    }
}

/// How long the launcher waits for the members' output to end.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(DELIVERY_TIMEOUT.as_secs() + SETTLE_TIMEOUT.as_secs() + 60);
/// How long a member whose output ended may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits (bounded) for a member whose output ended; its exit status.
fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for a member: {e}"))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!("a member closed its output but did not exit within {EXIT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn launch(options: &Options) -> Result<(), String> {
    let config = options.load_checked().map_err(|e| e.to_string())?;
    let ids: Vec<NodeId> = config.view.members.clone();
    let cores = available_cores();
    let namespace = format!("{}-{}", config.shm_namespace, std::process::id());
    println!(
        "derecho multicast: {} members over {}, each sending {} messages of {} bytes into one ordered shard",
        ids.len(),
        config.transport,
        options.count,
        options.size
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let (lines_tx, lines_rx) = mpsc::channel::<(NodeId, Option<String>)>();
    let mut members = Members { children: Vec::new(), shm_namespace: namespace.clone() };
    for (i, &id) in ids.iter().enumerate() {
        let core = (!options.unpinned && !cores.is_empty()).then(|| cores[i % cores.len()]);
        let mut child = Command::new(&exe)
            .args(options.member_args(id, core, &namespace))
            .env("RUST_LOG", derecho_examples::child_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start member {id}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((id, Some(line)));
            }
            let _ = tx.send((id, None));
        });
        let place = core.map_or("unpinned".to_string(), |c| format!("core {c}"));
        println!("started member {} (pid {}, {place})", id.0, child.id());
        members.children.push((id, child));
    }
    drop(lines_tx);

    // Relay the members' lines until every member's output ends; keep their summaries. A member
    // that fails ends the run: dropping `members` stops the others.
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut summaries: Vec<Summary> = Vec::new();
    let mut open = ids.len();
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok((_, Some(line))) => match Summary::parse(&line) {
                Some(s) => summaries.push(s),
                None => println!("{line}"),
            },
            Ok((id, None)) => {
                open -= 1;
                let child = &mut members.children.iter_mut().find(|(i, _)| *i == id).expect("a started member").1;
                let status = wait_exit(child)?;
                if !status.success() {
                    return Err(format!("member {} exited with {status}; stopping the others", id.0));
                }
            }
            Err(_) => return Err(format!("members still running after {LAUNCH_TIMEOUT:?}")),
        }
    }
    drop(members);
    verdict(&ids, &summaries)
}

/// Checks that every member reported, and that all delivered the same sequence.
fn verdict(ids: &[NodeId], summaries: &[Summary]) -> Result<(), String> {
    let missing: Vec<_> = ids.iter().filter(|id| !summaries.iter().any(|s| s.me == **id)).collect();
    if !missing.is_empty() {
        return Err(format!("no summary from members {missing:?}"));
    }
    let first = &summaries[0];
    for s in summaries {
        if (s.delivered, s.digest) != (first.delivered, first.digest) {
            return Err(format!(
                "members disagree: member {} delivered {} messages (digest {:016x}), member {} delivered {} \
                 (digest {:016x})",
                first.me, first.delivered, first.digest, s.me, s.delivered, s.digest
            ));
        }
    }
    println!(
        "\nall {} members delivered the same {} messages in the same order (digest {:016x})",
        ids.len(),
        first.delivered,
        first.digest
    );
    Ok(())
}
