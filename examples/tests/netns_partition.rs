//! A real partition: three member processes, each in a network namespace of its own, joined by a
//! bridge in a fourth ("switch") namespace. Once all three run in one view, member 2's port on
//! the switch goes down: member 2 can reach nobody, and nobody it. Partition safety must make
//! member 2 stop with `Partitioned` (it sees two of three members fail) while members 0 and 1
//! install a view without it and finish.
//!
//! The test sets the namespaces up and tears them down itself (names carry the process id). It
//! needs root and `ip` (iproute2); without them it says so and skips.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::Members;
use common::netns::{Net, skip_reason};

#[test]
fn an_isolated_member_stops_partitioned_and_the_majority_continues() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED an_isolated_member_stops_partitioned_and_the_majority_continues: {why}");
        return;
    }
    let net = Net::new(3).expect("set up the namespaces");
    let exe = env!("CARGO_BIN_EXE_group-demo");
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut members = Members(Vec::new());
    for k in 0..3 {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            net.members[k].clone(),
            exe.into(),
            "--member".into(),
            "--count".into(),
            "6000".into(),
            "--rate".into(),
            "1000".into(),
            "--set".into(),
            format!("me={k}"),
            "--set".into(),
            format!("listen=\"{}:7000\"", Net::addr(k)),
            "--set".into(),
            "membership.suspect_after_ms=200".into(),
            "--set".into(),
            "insecure=true".into(),
        ];
        if k > 0 {
            args.extend(["--set".into(), format!("contact=\"{}:7000\"", Net::addr(0))]);
        }
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a member");
        for (out, tx) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, tx.clone()),
            (Box::new(child.stderr.take().unwrap()), tx.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send((k, line));
                }
            });
        }
        members.0.push(child);
    }
    drop(tx);

    let mut seen: Vec<(usize, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut isolated = false;
    let mut in_three = [false; 3];
    let mut summaries = Vec::new();
    let mut partitioned = None;
    while summaries.len() < 2 || partitioned.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((k, line)) = rx.recv_timeout(left) else {
            panic!("the scenario did not finish within 120 s; output so far:\n{seen:#?}");
        };
        seen.push((k, line.clone()));
        // Joiners take ranks in the order they were admitted: [0,1,2] or [0,2,1].
        if line.contains("members [0,1,2]") || line.contains("members [0,2,1]") {
            in_three[k] = true;
        }
        // Isolate member 2 once all three run in one view and have delivered something.
        if !isolated && in_three.iter().all(|&b| b) && k == 2 && line.contains(": sent ") {
            net.isolate(2).expect("take member 2's port down");
            isolated = true;
        }
        if line.starts_with("summary ") {
            assert!(k != 2, "the isolated member finished as if nothing happened: {line}");
            summaries.push((k, line.clone()));
        }
        if k == 2 && line.contains("partitioned") {
            partitioned = Some(line.clone());
        }
    }
    assert!(isolated, "member 2 was never isolated:\n{seen:#?}");
    let reason = partitioned.unwrap();
    assert!(reason.contains("partitioned: 2 of the 3 members"), "{reason}");
    // Members 0 and 1 installed the same view without member 2, and agree on everything.
    for k in 0..2 {
        assert!(
            seen.iter().any(|(m, l)| *m == k && l.contains("members [0,1] ") && l.contains("departed [2]")),
            "member {k} never installed a view without member 2:\n{seen:#?}"
        );
    }
    let fields = |l: &str| {
        l.split_whitespace()
            .filter(|f| f.starts_with("delivered=") || f.starts_with("digest="))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&summaries[0].1), fields(&summaries[1].1), "the majority disagrees: {summaries:?}");
    for c in &mut members.0 {
        let _ = c.wait();
    }
    let codes: Vec<Option<i32>> =
        members.0.iter_mut().map(|c| c.try_wait().ok().flatten().and_then(|s| s.code())).collect();
    assert_eq!(codes[0], Some(0), "member 0 failed");
    assert_eq!(codes[1], Some(0), "member 1 failed");
    assert_ne!(codes[2], Some(0), "the isolated member exited as if it succeeded");
    drop(members);
    drop(net);
}
