//! The `kv` demo and command-line client as a user runs them: four member processes, keys
//! written from outside the group, the command-line client in its own process, a member killed,
//! every key checked at every survivor of its shard, then every member killed and restarted from
//! its logs and every key checked again; and the client's errors.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the kv binary");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("kv {args:?} did not finish in 120 s:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_demo_keeps_every_key_through_a_failure_and_a_restart() {
    demo(&["demo"], "loopback TCP");
}

#[test]
fn the_demo_over_shared_memory_keeps_every_key_through_a_failure_and_a_restart() {
    demo(&["demo", "--shm"], "shared memory");
}

fn demo(args: &[&str], over: &str) {
    let out = run(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kv demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "client: 100 puts",
        "it was Some(\"value7\")",
        "key7 = seven, again",
        "key7 = value7 at time",
        "put fruit = plum",
        "fruit = plum",
        "launcher: killed member 3 (SIGKILL)",
        "launcher: all 100 keys intact at every surviving member of their shard",
        "launcher: killed every member (SIGKILL)",
        "client: the group restarted in view",
        "launcher: all 100 keys intact at every member of their shard after the restart",
        "is still Some(\"value7\")",
        &format!("over {over}"),
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
}

#[test]
fn the_client_reports_errors_clearly() {
    let out = run(&["--contact", "not-an-address", "view"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an address"));
    // Nobody listening there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = run(&["--contact", &dead, "get", "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no member of the group answered"), "{out:?}");
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["demo", "--tcp"]);
    assert_eq!(out.status.code(), Some(2));
}
