//! A full disk under load. Three `kv member` processes persist their logs, each on a tmpfs of
//! its own. Once the group runs, the tmpfs of the member alone in its shard (the hard case: no
//! other member holds its shard's state) is shrunk to 1 MiB above what it holds, and four clients
//! keep putting distinct keys.
//!
//! * The member whose log fills stops at once, says why (the log's path and the OS error) and
//!   exits non-zero.
//! * Meanwhile clients get a typed error that names the cause: the view is inadequate because
//!   the member's shard has no member left.
//! * Restarted with its logs once there is room again, it brings its shard back, and every put
//!   that was acknowledged (durable at every member of its shard) is there with its value, at
//!   every member of its shard.
//!
//! Needs root (to mount the tmpfs); without it the test says so and skips.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use derecho::rpc::{ClientError, ClientView, ExternalClient, ExternalHandle, block_on};
use derecho_examples::kv::{KvStoreExternal, shard_of};

const SHARDS: u16 = 2;

/// Member processes and tmpfs mounts, killed and removed when dropped.
struct Scratch {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
    members: Vec<Option<Child>>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in self.members.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn mount(dir: &Path, options: &str) -> bool {
    Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success())
}

/// Bytes in use on the file system of `dir`.
fn used(dir: &Path) -> u64 {
    let out = Command::new("stat").args(["-f", "-c", "%b %f %S"]).arg(dir).output().expect("stat -f");
    let v: Vec<u64> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[0] - v[1]) * v[2]
}

/// Starts `kv member` `me` persisting to `dir`, joining through `contact`; returns the child and
/// its listening address (from its first line).
fn member(me: u32, dir: &Path, contact: Option<&str>, stderr: &Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv"));
    cmd.args(["member", "--set", &format!("me={me}"), "--set", "listen=\"127.0.0.1:0\"", "--set", "insecure=true"]);
    cmd.arg("--persist").arg(dir);
    if let Some(c) = contact {
        cmd.args(["--set", &format!("contact=\"{c}\"")]);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("start kv member");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").expect("readable");
    assert!(first.contains("listening"), "member {me}: {first}");
    let addr = first.rsplit(' ').next().unwrap().to_string();
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, addr)
}

/// Waits (60 s at most) for a view that `ok` accepts.
fn wait_view(client: &ExternalClient, what: &str, ok: impl Fn(&ClientView) -> bool) -> Arc<ClientView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = client.blocking().refresh_view()
            && ok(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no view with {what} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_member_whose_disk_fills_stops_and_no_acknowledged_put_is_lost() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_member_whose_disk_fills_stops_and_no_acknowledged_put_is_lost: not root (mounting a tmpfs needs it)"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("derecho-full-disk-{}", std::process::id()));
    let mut scratch = Scratch { dir: dir.clone(), mounts: Vec::new(), members: Vec::new() };
    let logs = |k: u32| dir.join(format!("m{k}"));
    let err = |k: u32, run: u32| dir.join(format!("member-{k}-{run}.err"));
    for k in 0..3 {
        std::fs::create_dir_all(logs(k)).unwrap();
        if !mount(&logs(k), "size=64m") {
            eprintln!("SKIPPED a_member_whose_disk_fills_stops_and_no_acknowledged_put_is_lost: cannot mount a tmpfs");
            return;
        }
        scratch.mounts.push(logs(k));
    }
    let (c0, a0) = member(0, &logs(0), None, &err(0, 0));
    scratch.members.push(Some(c0));
    let mut addrs = vec![a0.clone()];
    for k in 1..3 {
        let (c, a) = member(k, &logs(k), Some(&a0), &err(k, 0));
        scratch.members.push(Some(c));
        addrs.push(a);
    }
    let contacts: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
    let client = ExternalClient::builder("kv-demo", contacts.iter().map(SocketAddr::to_string))
        .timeout(Duration::from_secs(10))
        .build();
    let v = wait_view(&client, "three members", |v| v.members.len() == 3 && !v.shards.is_empty());
    let (alone_in, victim) = v
        .shards
        .iter()
        .find_map(|(s, m)| (m.len() == 1).then(|| (*s, m[0].0)))
        .unwrap_or_else(|| panic!("no shard with one member in {:?}", v.shards));
    let room = used(&logs(victim)) + (1 << 20);
    let shrunk =
        Command::new("mount").args(["-o", &format!("remount,size={}k", room >> 10)]).arg(logs(victim)).status();
    assert!(shrunk.is_ok_and(|s| s.success()), "cannot shrink member {victim}'s tmpfs");
    let store = {
        let client = client.clone();
        move |key: &str| KvStoreExternal::new(ExternalHandle::new(client.clone(), shard_of(key, SHARDS)))
    };
    // Four clients put distinct keys until the victim stopped and a second more.
    let acked = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let errors = Arc::new(Mutex::new(Vec::<ClientError>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, errors, stop, store) = (acked.clone(), errors.clone(), stop.clone(), store.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    let value = format!("value {w} {i} {}", "x".repeat(64)).into_bytes();
                    match block_on(store(&key).put(&key, &value)) {
                        Ok(_) => acked.lock().unwrap().push((key, value)),
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = scratch.members[victim as usize].as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "member {victim}'s log did not fill within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    scratch.members[victim as usize] = None;
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // It stopped, non-zero, saying which log and what the system said.
    assert!(!status.success(), "member {victim} exited with {status} after its disk filled");
    let said = std::fs::read_to_string(err(victim, 0)).unwrap();
    let line = said
        .lines()
        .find(|l| l.contains("this member stopped"))
        .unwrap_or_else(|| panic!("member {victim} did not say why it stopped: {said}"));
    let log = logs(victim);
    assert!(line.contains(log.to_str().unwrap()), "the reason does not name the log: {line}");
    assert!(line.contains("No space left on device"), "the reason does not give the OS error: {line}");
    // The others run on; calls are refused with the cause, not lost.
    for k in (0..3).filter(|k| *k != victim as usize) {
        let m = scratch.members[k].as_mut().unwrap();
        assert!(
            m.try_wait().unwrap().is_none(),
            "member {k} stopped too: {}",
            std::fs::read_to_string(err(k as u32, 0)).unwrap()
        );
    }
    let key = (0..).map(|i| format!("probe{i}")).find(|k| shard_of(k, SHARDS) == alone_in).unwrap();
    match block_on(store(&key).put(&key, b"while the shard is gone")) {
        Err(ClientError::Unavailable { shard, why, .. }) => {
            assert_eq!(shard, alone_in);
            assert!(why.contains(&format!("shard {}", alone_in.shard.0)), "the reason does not name the shard: {why}");
        }
        other => panic!("a put to the shard that lost its only member: {other:?}"),
    }
    // Room again: restarted with its logs, it brings its shard back.
    let grown = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&log).status();
    assert!(grown.is_ok_and(|s| s.success()));
    let survivor = addrs[(0..3).find(|k| *k != victim as usize).unwrap()].clone();
    let (c, _) = member(victim, &log, Some(&survivor), &err(victim, 1));
    scratch.members[victim as usize] = Some(c);
    let v = wait_view(&client, "three members and every shard", |v| v.members.len() == 3 && v.shards.len() == 2);
    // Every acknowledged put is there, at each member of its shard.
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 1000, "only {} puts were acknowledged before the disk filled", acked.len());
    for (key, value) in acked.iter() {
        let s = shard_of(key, SHARDS);
        let holders = v.shards.iter().find(|(id, _)| *id == s).map(|(_, m)| m.clone()).unwrap();
        for m in holders {
            let got = block_on(store(key).get(Some(m), key)).expect("a get");
            assert_eq!(got.map(|(_, v)| v).as_deref(), Some(&value[..]), "{key}, acknowledged, is wrong at member {m}");
        }
    }
    let errors = errors.lock().unwrap();
    let kinds: std::collections::BTreeSet<String> =
        errors.iter().map(|e| e.to_string().split(':').next().unwrap_or_default().to_string()).collect();
    eprintln!("full disk: {} puts acknowledged, {} refused: {kinds:?}", acked.len(), errors.len());
}
