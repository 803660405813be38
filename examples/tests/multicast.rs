//! The `multicast` demo as a user runs it: member processes from a configuration file, over
//! shared memory and TCP, and the errors a wrong configuration gets.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the `multicast` binary with `args`, killing it if it takes longer than 120 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_multicast-demo"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the multicast-demo binary");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "multicast-demo {args:?} did not finish within 120 s\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts that the run succeeded and that the launcher found every member in agreement.
fn assert_agreement(out: &Output, members: u32, messages: u64) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "multicast failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let verdict = format!("all {members} members delivered the same {messages} messages in the same order");
    assert!(stdout.contains(&verdict), "no verdict {verdict:?} in:\n{stdout}");
    for m in 0..members {
        assert!(stdout.contains(&format!("member {m}: delivered all: {messages} messages")), "member {m}:\n{stdout}");
    }
}

#[test]
fn shared_memory_members_deliver_the_same_order() {
    let out = run(&["--set", "transport=shm", "--count", "3000", "--unpinned"]);
    assert_agreement(&out, 3, 9000);
}

#[test]
fn tcp_members_with_tls_from_a_configuration_file() {
    // Ports the kernel hands out now are free; the members bind them again. All four listeners
    // stay open until every port is known, or the kernel could hand out one port twice.
    let listeners: Vec<std::net::TcpListener> =
        (0..4).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(listeners);
    // Mutual TLS between the members: certificates of a throw-away authority, named by `[tls] dir`.
    let certs = std::env::temp_dir().join(format!("multicast-test-{}-tls", std::process::id()));
    let ca = derecho::runtime::tls::DevCa::new().unwrap();
    ca.write_nodes(&certs, 0..4).unwrap();
    let mut toml = format!(
        "me = 0\ntransport = \"tcp\"\nspin_us = 20\n[tls]\ndir = {:?}\n[limits]\npayload_len_max = 2048\n",
        certs.display().to_string()
    );
    for (id, port) in ports.iter().enumerate() {
        toml += &format!("[[members]]\nid = {id}\naddress = \"127.0.0.1:{port}\"\n");
    }
    // Two of the four members send.
    toml += "[[shards]]\nmembers = [0, 1, 2, 3]\nsenders = [1, 3]\n";
    let path = std::env::temp_dir().join(format!("multicast-test-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--count", "2000", "--size", "1500", "--unpinned"]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&certs);
    assert_agreement(&out, 4, 4000);
}

#[test]
fn a_wrong_configuration_is_refused_and_names_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "limits.window_len=0"], "limits.window_len"),
        (&["--set", "transport=carrier-pigeon"], "carrier-pigeon"),
        (&["--set", "spin_us=2000000"], "spin_us"),
        (&["--size", "20000"], "payload_len_max"),
        (&["--config", "/nonexistent/multicast.toml"], "/nonexistent/multicast.toml"),
        (&["--count", "zero"], "--count"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{stdout}");
        assert!(stderr.contains(needle), "{args:?}: {needle:?} not in:\n{stderr}");
        assert!(!stdout.contains("started member"), "{args:?} started members before refusing");
    }
}

#[test]
fn a_failing_member_stops_the_others() {
    // Member 2 is not in the shard, so it fails at once; the others would wait for it at the
    // start-up barrier for start_timeout_ms (60 s here) if the launcher did not stop them.
    let toml = "me = 0\ntransport = \"shm\"\nstart_timeout_ms = 60000\n\
                [[members]]\nid = 0\n[[members]]\nid = 1\n[[members]]\nid = 2\n\
                [[shards]]\nmembers = [0, 1]\n";
    let path = std::env::temp_dir().join(format!("multicast-fail-test-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let start = Instant::now();
    let out = run(&["--config", path.to_str().unwrap(), "--count", "10", "--unpinned"]);
    let _ = std::fs::remove_file(&path);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "the run succeeded:\n{stdout}");
    assert!(stderr.contains("member 2 exited"), "no word of member 2 in:\n{stderr}");
    assert!(stderr.contains("not in the first shard"), "member 2's reason missing from:\n{stderr}");
    assert!(start.elapsed() < Duration::from_secs(30), "the launcher waited {:?} for the others", start.elapsed());
}
