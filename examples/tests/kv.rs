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
        "it was \"value7\"",
        "key7 = seven, again",
        "key7 = value7 at time",
        "key7 = value7 at version v",
        "put fruit = plum",
        "above the group's limit of 10240 (limits.payload_len_max)",
        "fruit = plum",
        "launcher: killed member 3 (SIGKILL)",
        "launcher: all 100 keys intact at every surviving member of their shard",
        "launcher: killed every member (SIGKILL)",
        "client: the group restarted in view",
        "launcher: all 100 keys intact at every member of their shard after the restart",
        "is still \"value7\"",
        "$ kv status",
        "STAGE",
        "running",
        "launcher: member 2 left on SIGTERM and exited 0",
        &format!("over {over}"),
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
}

#[test]
fn the_client_reports_errors_clearly() {
    let err = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let out = run(&["--contact", "not-an-address", "view"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err(&out).contains("is not HOST:PORT"), "{out:?}");
    // Nobody listening there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = run(&["--contact", &dead, "get", "k"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err(&out).contains("no member of the group answered") && err(&out).contains(&dead), "{out:?}");
    // Usage errors exit 2 and say what is wrong.
    for (args, needle) in [
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&["demo", "--tcp"][..], "--tcp"),
        (&["put", "k", "v"][..], "--contact"),
        (&["--contact", &dead, "put", "k"][..], "VALUE"),
        (&["--contact", &dead, "get", "k", "--at", "v2"][..], "is not a version"),
        (&["--contact", &dead, "get", "k", "--time", "yesterday"][..], "is not a time"),
        (&["--contact", &dead, "get", "k", "--at", "v2.2", "--time", "now"][..], "cannot be used with"),
        (&["status"][..], "HOST:PORT"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(err(&out).contains(needle), "{args:?}: no {needle:?} in {}", err(&out));
    }
    // Help for a subcommand, with the global option before it.
    let out = run(&["--contact", &dead, "get", "--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--at <VERSION>") && help.contains("--time <TIME>") && help.contains("--contact"), "{help}");
    // A member whose log directory is a file says so.
    let file = std::env::temp_dir().join(format!("kv-persist-file-{}", std::process::id()));
    std::fs::write(&file, b"not a directory").unwrap();
    let out = run(&[
        "member",
        "--set",
        "listen=\"127.0.0.1:0\"",
        "--set",
        "insecure=true",
        "--persist",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err(&out).contains("is not a directory"), "{}", err(&out));
    // A configuration error names the variable it came from; other DERECHO_ variables are not read.
    let out = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(["member", "--set", "listen=\"127.0.0.1:0\"", "--set", "insecure=true"])
        .env("DERECHO_CFG__MEMBERSHIP__HEARTBEAT_MS", "0")
        .env("DERECHO_CONF_FILE", "/etc/derecho.cfg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err(&out).contains("membership.heartbeat_ms") && err(&out).contains("DERECHO_CFG__MEMBERSHIP__HEARTBEAT_MS"),
        "{}",
        err(&out)
    );
    // Neither TLS nor plaintext on purpose: refused, saying what to give.
    let out = run(&["member", "--set", "listen=\"127.0.0.1:0\""]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err(&out).contains("tls") && err(&out).contains("insecure = true"), "{}", err(&out));
    // `kv certs` writes what `--tls-dir` reads; a member needs its own files there.
    let dir = std::env::temp_dir().join(format!("kv-certs-{}", std::process::id()));
    let out = run(&["certs", dir.to_str().unwrap(), "--members", "2"]);
    assert!(out.status.success(), "{out:?}");
    for f in ["ca.pem", "node-0.pem", "node-1.key", "client.pem", "client.key"] {
        assert!(dir.join(f).exists(), "kv certs wrote no {f}");
    }
    let out = run(&["member", "--tls-dir", dir.to_str().unwrap(), "--set", "me=2", "--set", "listen=\"127.0.0.1:0\""]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err(&out).contains("node-2.pem"), "{}", err(&out));
}

/// A member started with `args` after `kv member --set listen=127.0.0.1:0 --set insecure=true`, its standard
/// output read until it listens (and, with a metrics listener, until it says where).
struct Member {
    child: std::process::Child,
    /// The rest of its standard output (kept open: a member whose output is closed would fail
    /// to print).
    out: std::io::BufReader<std::process::ChildStdout>,
    /// Its listener's address.
    listen: String,
    /// Its metrics address, if it serves metrics.
    metrics: Option<String>,
}

impl Member {
    fn start(env: &[(&str, &str)], args: &[&str]) -> Member {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_kv"))
            .args(["member", "--set", "listen=\"127.0.0.1:0\"", "--set", "insecure=true"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the member ended before listening");
        }
        let listen = line.trim().rsplit(' ').next().expect("an address").to_string();
        let mut metrics = None;
        if args.iter().any(|s| s.starts_with("metrics_listen")) {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the member ended before its metrics line");
            let at = line.split("http://").nth(1).and_then(|r| r.strip_suffix("/metrics\n"));
            metrics = Some(at.unwrap_or_else(|| panic!("not a metrics line: {line}")).to_string());
        }
        Member { child, out, listen, metrics }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; its exit code and standard error.
    fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: `kill` with a child's pid and a signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = self.child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_member_logs_what_it_does_and_leaves_on_sigterm() {
    // Readable lines at info, each event of the member in its span.
    let m = Member::start(&[("RUST_LOG", "info")], &[]);
    let (code, err) = m.terminate();
    assert_eq!(code, Some(0), "{err}");
    for needle in [
        "INFO",
        "member{id=0 view=0}: derecho::driver::group::runner: view installed",
        "SIGTERM",
        "leaving the group",
        "left the group",
    ] {
        assert!(err.contains(needle), "no {needle:?} in:\n{err}");
    }
    assert!(!err.contains("\x1b["), "colours on a pipe:\n{err}");
    assert!(!err.contains("}:member{"), "a view's span nested in the previous one:\n{err}");
    // JSON lines for log shippers.
    let m = Member::start(&[("RUST_LOG", "info"), ("DERECHO_LOG_FORMAT", "json")], &[]);
    let (code, err) = m.terminate();
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        let level = l.contains("\"level\":\"INFO\"") || l.contains("\"level\":\"WARN\"");
        assert!(l.starts_with('{') && l.ends_with('}') && level, "not a JSON event: {l}");
    }
    assert!(err.contains("\"message\":\"view installed\"") && err.contains("\"span\":{\"id\":0"), "{err}");
    // Quiet when asked, but for one loud line: it runs plaintext (insecure = true, on purpose).
    let m = Member::start(&[("RUST_LOG", "warn")], &["--set", "insecure=true"]);
    let (code, err) = m.terminate();
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains("WARN") && lines[0].contains("insecure: plaintext"),
        "expected only the plaintext warning:\n{err}"
    );
}

#[test]
fn joining_through_a_dead_contact_says_whom_it_asks_and_gives_up_with_the_address() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(["member", "--set", "me=1", "--set", "listen=\"127.0.0.1:0\"", "--set", "join_timeout_ms=3000"])
        .args(["--set", "insecure=true"])
        .args(["--set", &format!("contact=\"{dead}\"")])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "it gave up after {:?}", started.elapsed());
    assert!(err.contains(&format!("waiting: asking {dead} to let this member in")), "no progress in:\n{err}");
    assert!(err.contains("kv: error:") && err.lines().last().is_some_and(|l| l.contains(&dead)), "{err}");
}

#[test]
fn status_shows_a_member_and_watch_refreshes_it() {
    let m = Member::start(&[("RUST_LOG", "warn")], &["--set", "metrics_listen=\"127.0.0.1:0\""]);
    let addr = m.metrics.clone().expect("a metrics address");
    let out = run(&["status", &addr]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.contains("STAGE") && table.contains(&addr) && table.contains("running"), "{table}");
    // --watch redraws until stopped.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(["status", "--watch", "--interval", "0.1", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    watch.kill().unwrap();
    let frames = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).matches("\x1b[2J").count();
    assert!(frames >= 2, "{frames} frames in 0.8 s");
    // A member that cannot be read is shown as such, and no member at all is an error.
    let (code, err) = m.terminate();
    assert_eq!(code, Some(0), "{err}");
    let out = run(&["status", &addr]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr));
}

#[test]
fn a_second_signal_ends_a_member_that_cannot_leave() {
    use std::io::BufRead;
    // Member 0 leads; member 1 joins it. With the leader stopped (SIGSTOP), member 1 cannot
    // leave: a second SIGTERM ends it at once.
    let leader = Member::start(&[("RUST_LOG", "warn")], &[]);
    let mut joiner = Member::start(&[("RUST_LOG", "info")], &["--set", "me=1", "--contact", &leader.listen]);
    // SAFETY: `kill` with a child's pid and a signal number has no memory effects.
    let signal = |pid: u32, s: i32| assert_eq!(unsafe { libc::kill(pid as libc::pid_t, s) }, 0);
    signal(leader.child.id(), libc::SIGSTOP);
    signal(joiner.child.id(), libc::SIGTERM);
    // The first signal is taken (it says so) before the second is sent: signals of one kind
    // pending together would be one.
    let mut err = std::io::BufReader::new(joiner.child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("leaving the group") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the joiner ended without leaving");
    }
    let sent = Instant::now();
    signal(joiner.child.id(), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = joiner.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of the second SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut joiner.out, &mut rest).unwrap();
    signal(leader.child.id(), libc::SIGCONT);
    drop(leader.terminate());
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(rest.contains("SIGTERM again: gave up leaving the group"), "{rest}");
    assert!(sent.elapsed() < Duration::from_secs(2), "the second signal took {:?}", sent.elapsed());
}
