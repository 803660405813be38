//! `multicast`: a group of member processes on this machine, every member sending into one
//! ordered shard, every member printing what it delivers and how fast.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin multicast [-- --count N --size BYTES --set transport=shm]
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
use derecho_examples::multicast::{Command as Cli, DELIVERY_TIMEOUT, Options, SETTLE_TIMEOUT, Summary, USAGE};
use derecho_examples::multicast::{parse_args, run_member};

fn main() -> ExitCode {
    let command = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("multicast: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Cli::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Cli::Member(o) => match run_member(&o) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("multicast member: error: {e}");
                ExitCode::FAILURE
            }
        },
        Cli::Launch(o) => match launch(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("multicast: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Kills and reaps the members still running when dropped.
struct Members(Vec<(NodeId, Child)>);

impl Drop for Members {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn launch(options: &Options) -> Result<(), String> {
    let config = options.load_checked().map_err(|e| e.to_string())?;
    let ids: Vec<NodeId> = config.view.members.clone();
    let cores = available_cores();
    let namespace = format!("{}-{}", config.shm_namespace, std::process::id());
    println!(
        "derecho multicast: {} members over {:?}, each sending {} messages of {} bytes into one ordered shard",
        ids.len(),
        config.transport,
        options.count,
        options.size
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let (lines_tx, lines_rx) = mpsc::channel::<(NodeId, Option<String>)>();
    let mut members = Members(Vec::new());
    for (i, &id) in ids.iter().enumerate() {
        let core = (!options.unpinned && !cores.is_empty()).then(|| cores[i % cores.len()]);
        let mut child = Command::new(&exe)
            .args(options.member_args(id, core, &namespace))
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
        members.0.push((id, child));
    }
    drop(lines_tx);

    // Relay the members' lines until every member's output ends; keep their summaries.
    let deadline = Instant::now() + DELIVERY_TIMEOUT + SETTLE_TIMEOUT + Duration::from_secs(60);
    let mut summaries: Vec<Summary> = Vec::new();
    let mut open = ids.len();
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok((_, Some(line))) => match Summary::parse(&line) {
                Some(s) => summaries.push(s),
                None => println!("{line}"),
            },
            Ok((_, None)) => open -= 1,
            Err(_) => return Err(format!("members still running after {:?}", DELIVERY_TIMEOUT + SETTLE_TIMEOUT)),
        }
    }
    let mut failed = Vec::new();
    for (id, child) in &mut members.0 {
        let status = child.wait().map_err(|e| format!("waiting for member {id}: {e}"))?;
        if !status.success() {
            failed.push(format!("member {id} exited with {status}"));
        }
    }
    members.0.clear();
    let _ = ShmTransport::remove_namespace(std::path::Path::new("/dev/shm"), &namespace);
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
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
