//! An external client on another host: three `kv member` processes, each in a network namespace
//! of its own, and the `kv` command-line client in a fourth, whose firewall (nftables) drops every
//! inbound connection. The client reaches the members; nothing can reach it except over the
//! connections it opened, so this only works because members answer on those connections
//! (they never dial back). Puts, gets and the view work; after a member is killed, the client
//! goes on with the others.
//!
//! The test sets the namespaces up and tears them down itself. It needs root, `ip` (iproute2)
//! and `nft` (nftables, installed by `.ci/setup`); without them it says so and skips.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Members;
use common::netns::{Net, ip, skip_reason};

/// Runs the `kv` client in namespace `ns` against `contact`.
fn kv(ns: &str, contact: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kv"), "--contact", contact])
        .args(args)
        .output()
        .expect("run the kv client")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_client_that_accepts_no_connections_is_served_from_another_host() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED a_client_that_accepts_no_connections_is_served_from_another_host: {why}");
        return;
    }
    if Command::new("nft").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED a_client_that_accepts_no_connections_is_served_from_another_host: no `nft` (run .ci/setup)");
        return;
    }
    // Hosts 0..2 run members, host 3 the client.
    let net = Net::new(4).expect("set up the namespaces");
    let client_ns = net.members[3].clone();
    for rule in [
        vec!["add", "table", "inet", "guard"],
        vec!["add", "chain", "inet", "guard", "input", "{ type filter hook input priority 0 ; policy accept ; }"],
        vec!["add", "rule", "inet", "guard", "input", "iifname", "v0", "ct", "state", "new", "drop"],
    ] {
        let out = Command::new("ip").args(["netns", "exec", &client_ns, "nft"]).args(&rule).output().unwrap();
        assert!(out.status.success(), "nft {rule:?}: {}", text(&out));
    }
    let mut members = Members(Vec::new());
    let contact = format!("{}:7000", Net::addr(0));
    for k in 0..3 {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            net.members[k].clone(),
            env!("CARGO_BIN_EXE_kv").into(),
            "member".into(),
            "--set".into(),
            format!("me={k}"),
            "--set".into(),
            format!("listen=\"{}:7000\"", Net::addr(k)),
            "--set".into(),
            "insecure=true".into(),
        ];
        if k > 0 {
            args.extend(["--set".into(), format!("contact=\"{contact}\"")]);
        }
        let child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a member");
        members.0.push(child);
    }
    // The view, from the client's host, once it has three members.
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let out = kv(&client_ns, &contact, &["view"]);
        if out.status.success() && text(&out).contains("members [0, 1, 2]") {
            break text(&out);
        }
        assert!(Instant::now() < deadline, "the group did not form as seen from the client: {}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    };
    // The client's host really accepts no connection from the network: a listener there is
    // reachable on its own loopback, not from a member's host.
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &client_ns, "python3", "-c"])
        .arg("import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 9)); s.listen(); print('up', flush=True); time.sleep(60)")
        .stdout(Stdio::piped())
        .spawn()
        .expect("a listener on the client's host");
    let mut up = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(listener.stdout.take().unwrap()), &mut up).unwrap();
    assert_eq!(up.trim(), "up");
    let probe = |ns: &str, addr: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c"])
            .arg(format!("timeout 2 bash -c 'echo > /dev/tcp/{addr}/9' 2>&1"))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe(&client_ns, "127.0.0.1"), "the listener on the client's host is not up");
    assert!(!probe(&net.members[0], &Net::addr(3)), "a member's host could connect to the client's host");
    let _ = listener.kill();
    let _ = listener.wait();
    for (key, value) in [("apple", "red"), ("pear", "green"), ("plum", "blue")] {
        let out = kv(&client_ns, &contact, &["put", key, value]);
        assert!(out.status.success(), "put {key}: {}", text(&out));
        let out = kv(&client_ns, &contact, &["get", key]);
        assert!(text(&out).contains(&format!("{key} = {value}")), "get {key}: {}", text(&out));
    }
    // A member fails; the client goes on with the others. The victim shares its shard with
    // another member (a shard left with none makes the view inadequate) and is not member 0
    // (the client's contact).
    let pair = view
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("shard ")?.split_once(": members [").map(|(_, m)| m.trim_end_matches(']'))
        })
        .map(|m| m.split(", ").map(|n| n.parse::<usize>().expect("a member id")).collect::<Vec<_>>())
        .find(|m| m.len() == 2)
        .unwrap_or_else(|| panic!("no shard with two members in {view}"));
    let victim = *pair.iter().find(|n| **n != 0).expect("a member other than 0");
    let _ = members.0[victim].kill();
    let rest: Vec<String> = (0..3).filter(|n| *n != victim).map(|n| n.to_string()).collect();
    let want = format!("members [{}]", rest.join(", "));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kv(&client_ns, &contact, &["view"]);
        if text(&out).contains(&want) {
            break;
        }
        assert!(Instant::now() < deadline, "the view never lost member {victim}: {}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    for key in ["apple", "pear", "plum"] {
        let out = kv(&client_ns, &contact, &["get", key]);
        assert!(out.status.success(), "get {key} after the failure: {}", text(&out));
    }
    let out = kv(&client_ns, &contact, &["put", "fig", "purple"]);
    assert!(out.status.success(), "put after the failure: {}", text(&out));
    drop(members);
    let _ = ip(&["netns", "exec", &client_ns, "nft", "delete", "table", "inet", "guard"]);
    drop(net);
}
