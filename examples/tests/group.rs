//! The `group` demo as a user runs it, and the real-process test of membership: three member
//! processes on loopback TCP under load, one killed with SIGKILL, the survivors' next view and
//! their delivery logs compared, and a fourth process that joins through state transfer.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the `group-demo` binary with `args`, killing it if it takes longer than 180 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_group-demo"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the group-demo binary");
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "group-demo {args:?} did not finish within 180 s\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole.lines().map(str::to_string).collect()
}

#[test]
fn a_killed_member_is_replaced_and_the_logs_agree() {
    let dir = std::env::temp_dir().join(format!("derecho-group-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run(&["--count", "3000", "--rate", "1500", "--unpinned", "--log-dir", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "group-demo failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("launcher: killed member 2 (SIGKILL)"), "{stdout}");
    assert!(stdout.contains("launcher: members 0, 1 and 3 delivered the same"), "{stdout}");

    // The survivors installed the same next view: members 0 and 1, member 2 departed.
    let next_view = |m: u32| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("member {m}: view ")) && l.contains("departed [2]"))
            .unwrap_or_else(|| panic!("member {m} never installed a view without member 2:\n{stdout}"))
            .split_once(": ")
            .unwrap()
            .1
            .to_string()
    };
    assert_eq!(next_view(0), next_view(1));
    assert!(next_view(0).contains("members [0,1] "), "{}", next_view(0));

    // The delivery logs, read independently of the launcher's own check.
    let log = |m: u32| lines(&dir.join(format!("member-{m}.log")));
    let (a, b, killed, joiner) = (log(0), log(1), log(2), log(3));
    assert_eq!(a, b, "the survivors delivered different sequences");
    assert!(a.len() >= 3 * 3000, "only {} deliveries", a.len());
    assert!(!killed.is_empty() && a.starts_with(&killed), "the killed member's log is not a prefix");
    assert!(a.len() > killed.len(), "nothing delivered after the kill");
    let first_view = joiner[0].split(' ').next().unwrap().to_string();
    let from = a.iter().position(|l| l.starts_with(&format!("{first_view} "))).expect("the joiner's first view");
    assert_eq!(joiner[..], a[from..], "the joiner's deliveries differ from the survivors' suffix");
    assert!(from > 0, "the joiner received no state: it joined before anything was delivered");
    // Each survivor's messages are all there, in order, exactly once.
    for sender in [0u32, 1, 3] {
        let nums: Vec<u64> = a
            .iter()
            .filter_map(|l| {
                let mut f = l.split(' ').skip(1);
                (f.next()? == sender.to_string() && f.next()? == "msg").then(|| f.next()?.parse().ok())?
            })
            .collect();
        assert_eq!(nums, (0..3000).collect::<Vec<u64>>(), "member {sender}'s messages");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_and_files_get_clear_errors() {
    let out = run(&["--count", "zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count"));
    let out = run(&[
        "--member",
        "--set",
        "membership.heartbeat_ms=0",
        "--set",
        "listen=\"127.0.0.1:0\"",
        "--set",
        "insecure=true",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("membership.heartbeat_ms"), "{stderr}");
}
