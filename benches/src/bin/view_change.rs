//! `view_change`: how long membership changes take, as a function of the heartbeat settings.
//!
//! Each trial starts three member processes of a `Group` on loopback TCP (member 0 starts the
//! group, 1 and 2 join it), then fails member 2 and measures the time from the failure to the
//! next view installed at *every* survivor, then starts member 3 and measures the time from its
//! join request to the view that adds it, installed at every member. Times come from the
//! members' own `CLOCK_MONOTONIC` stamps (one clock for every process of the machine).
//!
//! Two kinds of failure:
//! * `kill9`: SIGKILL. The kernel closes the member's sockets, so the survivors' transports see it
//!   at once; the heartbeat settings hardly matter.
//! * `stop`: SIGSTOP. The member is silent with its connections open (a hung process, a cable
//!   pulled): only the heartbeat timeout finds it. The baseline is the configured suspicion
//!   timeout, so the ratio is what the protocol adds to the detection time.
//!
//! ```text
//! cargo run --release -p derecho-benches --bin view_change [-- --quick] [-- --trials N]
//! ```

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use derecho::driver::{Application, GroupBuilder, GroupEvent, ViewChange};
use derecho::protocol::{Delivered, MembershipConfig, NodeId};
use derecho_benches::{ChildGuard, Record, arg, flag, median, percentile};

const BENCH: &str = "view_change";

/// Nanoseconds of `CLOCK_MONOTONIC`, comparable across the processes of this machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A member that prints every view it installs with the time it did.
struct Printer;

impl Application for Printer {
    fn deliver(&mut self, _: Delivered<'_>) {}

    fn view_installed(&mut self, c: &ViewChange) {
        let ids: Vec<String> = c.view.members.iter().map(|n| n.0.to_string()).collect();
        println!("view {} {} {}", c.view.id.0, ids.join(","), mono_ns());
    }
}

fn member(args: &[String]) {
    let num = |n: &str| -> u64 { arg(args, n).expect(n).parse().expect("a number") };
    let me = NodeId(num("--member") as u32);
    let membership = MembershipConfig {
        heartbeat: Duration::from_micros(num("--hb-us")),
        suspect_after: Duration::from_micros(num("--suspect-us")),
        ..MembershipConfig::default()
    };
    let executor = derecho::Builder::new().build().expect("executor");
    executor.block_on(async {
        let b = GroupBuilder::new(me, "127.0.0.1:0".parse().unwrap())
            .insecure()
            .name("view-change-bench")
            .membership(membership);
        let group = match arg(args, "--contact") {
            None => b.start(Printer).await.expect("start"),
            Some(c) => {
                println!("join-request {}", mono_ns());
                b.join(c.parse().expect("an address"), Printer).await.expect("join")
            }
        };
        println!("listening {}", group.local_addr());
        // Runs until the parent kills it.
        loop {
            if let GroupEvent::PeerFailed { peer, .. } = group.next_event().await {
                println!("failed {} {}", peer.0, mono_ns());
            }
        }
    });
}

/// The lines of the members of one trial.
struct Trial {
    members: Vec<ChildGuard>,
    tx: mpsc::Sender<(u32, String)>,
    rx: mpsc::Receiver<(u32, String)>,
    hb_us: u64,
    suspect_us: u64,
}

impl Trial {
    fn spawn(&mut self, id: u32, contact: Option<&str>) {
        let mut args = vec![
            "--child".to_string(),
            "member".into(),
            "--member".into(),
            id.to_string(),
            "--hb-us".into(),
            self.hb_us.to_string(),
            "--suspect-us".into(),
            self.suspect_us.to_string(),
        ];
        if let Some(c) = contact {
            args.extend(["--contact".into(), c.into()]);
        }
        let mut g = ChildGuard::spawn_self_with(&args, Stdio::piped());
        let out = g.0.as_mut().expect("child").stdout.take().expect("piped");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((id, line));
            }
        });
        self.members.push(g);
    }

    /// Waits for a line of `id` starting with `prefix` and satisfying `pred`; lines of others
    /// are passed to `other`.
    fn wait(&self, what: &str, mut pred: impl FnMut(u32, &str) -> bool) -> (u32, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (id, line) = self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {what} within 30 s"));
            if pred(id, &line) {
                return (id, line);
            }
        }
    }

    fn pid(&self, i: usize) -> i32 {
        self.members[i].0.as_ref().expect("child").id() as i32
    }
}

/// The time stamp of a `view V members T` line whose members are `members` (in any rank
/// order: joiners take ranks in the order they were admitted).
fn view_at(line: &str, members: &str) -> Option<u64> {
    let sorted = |s: &str| {
        let mut v: Vec<u32> = s.split(',').filter_map(|m| m.parse().ok()).collect();
        v.sort_unstable();
        v
    };
    let mut f = line.split(' ');
    (f.next()? == "view").then_some(())?;
    f.next()?;
    (sorted(f.next()?) == sorted(members)).then_some(())?;
    f.next()?.parse().ok()
}

/// One trial, in milliseconds: failure to next view at every survivor, the same from the first
/// survivor's transport noticing (SIGKILL only), join request to view at every member.
///
/// # Errors
///
/// The trial is spoiled when a view other than those it expects appears: a member that is not
/// the one killed was suspected (under load, with the short timeouts of the first cases).
fn trial(hb_us: u64, suspect_us: u64, signal: i32) -> Result<(f64, Option<f64>, f64), String> {
    let (tx, rx) = mpsc::channel();
    let mut t = Trial { members: Vec::new(), tx, rx, hb_us, suspect_us };
    t.spawn(0, None);
    let (_, l) = t.wait("member 0's address", |id, l| id == 0 && l.starts_with("listening "));
    let a0 = l["listening ".len()..].to_string();
    t.spawn(1, Some(&a0));
    t.spawn(2, Some(&a0));
    let mut in_three = [false; 3];
    let mut a1 = String::new();
    t.wait("a view of three at every member", |id, l| {
        if id == 1 && l.starts_with("listening ") {
            a1 = l["listening ".len()..].to_string();
        }
        if view_at(l, "0,1,2").is_some() {
            in_three[id as usize] = true;
        }
        in_three.iter().all(|&b| b) && !a1.is_empty()
    });
    // Let the start-of-view grace pass, so that the failure is found by the steady state.
    std::thread::sleep(Duration::from_micros(2 * suspect_us));
    let failed_at = mono_ns();
    // SAFETY: kill sends a signal to a child process of ours.
    unsafe { libc::kill(t.pid(2), signal) };
    let mut installed = [None; 2];
    let mut noticed: Option<u64> = None;
    let mut spoiled = None;
    t.wait("the survivors' next view", |id, l| {
        if unexpected_view(l, &["0,1,2", "0,1"]) {
            spoiled = Some(format!("member {id} installed {l:?} after member 2 was killed"));
            return true;
        }
        if let Some(at) = view_at(l, "0,1") {
            installed[id as usize] = Some(at);
        }
        if let Some(at) = l.strip_prefix("failed 2 ").and_then(|a| a.parse::<u64>().ok()) {
            noticed = Some(noticed.map_or(at, |n| n.min(at)));
        }
        installed.iter().all(Option::is_some)
    });
    if let Some(why) = spoiled {
        return Err(why);
    }
    let last = installed.iter().map(|t| t.unwrap()).max().unwrap();
    let detect = (last - failed_at) as f64 / 1e6;
    // From the first survivor's transport noticing the failure (a closed connection) to the view
    // at every survivor: the protocol's part, without the kernel's teardown of the process.
    let after_notice = noticed.map(|n| last.saturating_sub(n) as f64 / 1e6);
    // A stopped member is killed now; its process is reaped by its guard.
    // SAFETY: as above.
    unsafe { libc::kill(t.pid(2), libc::SIGKILL) };
    t.spawn(3, Some(&a1));
    let mut asked = None;
    let mut joined = [None; 3];
    t.wait("the view with the joiner at every member", |id, l| {
        if unexpected_view(l, &["0,1,2", "0,1", "0,1,3"]) {
            spoiled = Some(format!("member {id} installed {l:?} while member 3 joined"));
            return true;
        }
        if id == 3
            && let Some(at) = l.strip_prefix("join-request ")
        {
            asked = at.parse::<u64>().ok();
        }
        if let Some(at) = view_at(l, "0,1,3") {
            joined[if id == 3 { 2 } else { id as usize }] = Some(at);
        }
        asked.is_some() && joined.iter().all(Option::is_some)
    });
    if let Some(why) = spoiled {
        return Err(why);
    }
    let join = (joined.iter().map(|t| t.unwrap()).max().unwrap() - asked.unwrap()) as f64 / 1e6;
    Ok((detect, after_notice, join))
}

/// Whether `line` is a view of none of the `expected` member lists.
fn unexpected_view(line: &str, expected: &[&str]) -> bool {
    line.starts_with("view ") && expected.iter().all(|m| view_at(line, m).is_none())
}

fn main() {
    derecho_benches::log_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if arg(&args, "--child") == Some("member") {
        member(&args);
        return;
    }
    let quick = flag(&args, "--quick");
    let trials: usize = arg(&args, "--trials").map_or(if quick { 3 } else { 9 }, |v| v.parse().expect("a number"));
    // (heartbeat, suspicion timeout) in µs.
    let settings: &[(u64, u64)] = if quick {
        &[(2_000, 20_000), (10_000, 100_000)]
    } else {
        &[(1_000, 10_000), (2_000, 20_000), (10_000, 100_000)]
    };
    eprintln!("view_change benchmark ({}), {trials} trials per case", if quick { "quick" } else { "full" });
    for &(hb, sus) in settings {
        for (kind, signal) in [("kill9", libc::SIGKILL), ("stop", libc::SIGSTOP)] {
            let case = format!("tcp-{kind}-hb{}ms-sus{}ms", hb / 1000, sus / 1000);
            let (mut detect, mut noticed, mut join) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..trials {
                // A trial spoiled by a false suspicion (a loaded machine, short timeouts) is run
                // again; five in a row mean something else is wrong.
                let mut attempts = 0;
                let (d, n, j) = loop {
                    attempts += 1;
                    match trial(hb, sus, signal) {
                        Ok(r) => break r,
                        Err(why) if attempts < 5 => eprintln!("{case}: trial run again: {why}"),
                        Err(why) => panic!("{case}: five trials in a row spoiled; the last: {why}"),
                    }
                };
                detect.push(d);
                noticed.extend(n);
                join.push(j);
            }
            let max = percentile(&mut detect.clone(), 100.0);
            let mut crash = Record::new(BENCH, case.clone(), "crash_to_view_p50", median(detect), "ms");
            if signal == libc::SIGSTOP {
                // The floor: a silent member cannot be found before the suspicion timeout.
                crash = crash.with_baseline(sus as f64 / 1000.0);
            }
            crash.print();
            Record::new(BENCH, case.clone(), "crash_to_view_max", max, "ms").print();
            if signal == libc::SIGKILL && noticed.len() == trials {
                Record::new(BENCH, case.clone(), "noticed_to_view_p50", median(noticed), "ms").print();
            }
            Record::new(BENCH, case, "join_p50", median(join), "ms").print();
        }
    }
}
