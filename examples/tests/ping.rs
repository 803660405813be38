//! The `ping` demo: its loops in one process, and the binary as a user runs it.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use derecho::runtime::time::timeout;
use derecho::{Builder, TcpListener};
use derecho_examples::ping::{CHILD, Latencies, Link, PARENT, connect, ping, pong};

/// Connects both sides of `links` on one executor, pings 100 times and checks the pong side
/// echoed every frame and returned when the pinger closed.
fn ping_pong_in_one_process(links: (Link, Link)) {
    let executor = Builder::new().build().unwrap();
    executor.block_on(async {
        let (parent_link, child_link) = links;
        let parent = derecho::spawn(connect(PARENT, CHILD, parent_link));
        let child = connect(CHILD, PARENT, child_link).await.unwrap();
        let parent = parent.await.unwrap();
        let echoer = derecho::spawn(async move { pong(&child, PARENT).await });
        let round_trips = ping(&parent, CHILD, 100, 256).await.unwrap();
        parent.close(Duration::from_secs(1)).await;
        let echoed = timeout(Duration::from_secs(10), echoer).await.expect("pong returns after the close");
        assert_eq!(echoed.unwrap(), 100);
        let latencies = Latencies::new(round_trips).unwrap();
        assert_eq!(latencies.count, 100);
        assert!(latencies.min <= latencies.p50 && latencies.p50 <= latencies.p99 && latencies.p99 <= latencies.max);
    });
}

#[test]
fn tcp_ping_pong_in_one_process() {
    let bind = || TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (parent_listener, child_listener) = (bind(), bind());
    let parent_addr = parent_listener.local_addr();
    let child_addr = child_listener.local_addr();
    ping_pong_in_one_process((
        Link::Tcp { listener: parent_listener, other_addr: child_addr },
        Link::Tcp { listener: child_listener, other_addr: parent_addr },
    ));
}

#[test]
fn shm_ping_pong_in_one_process() {
    let namespace = format!("ping-test-{}", std::process::id());
    ping_pong_in_one_process((Link::Shm { namespace: namespace.clone() }, Link::Shm { namespace }));
}

/// Runs the `ping` binary with `args`, killing it if it takes longer than 60 s.
fn run_ping(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ping"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the ping binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ping {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_demo_measures_both_transports_and_exits_cleanly() {
    let out = run_ping(&["--rounds", "300"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for expected in ["tcp  TCP on loopback", "shm  shared memory", "300 round trips in", "p50", "p99", "status 0"] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let out = run_ping(&["--colour"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unexpected argument '--colour'") && stderr.contains("Usage: ping"), "{stderr}");
    let out = run_ping(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--transport <TRANSPORT>") && help.contains("--rounds <N>"), "{help}");
    assert!(!help.contains("--parent-addr"), "the child's flags are hidden: {help}");
}
