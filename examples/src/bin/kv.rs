//! `kv`: a sharded key-value store replicated with ordered calls, and a command-line client that
//! talks to it from outside the group.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin kv -- demo [--shm]          # the whole demo
//! cargo run --release -p derecho-examples --bin kv -- member --set me=0 --set listen=\"127.0.0.1:7000\"
//! cargo run --release -p derecho-examples --bin kv -- --contact 127.0.0.1:7000 put KEY VALUE
//! cargo run --release -p derecho-examples --bin kv -- --contact 127.0.0.1:7000 get KEY [--at VERSION | --time MICROS]
//! cargo run --release -p derecho-examples --bin kv -- --contact 127.0.0.1:7000 view
//! ```
//!
//! `demo` starts four member processes (two shards of the store, each member logging the
//! store's updates to disk with `--persist`), writes keys through the external client, runs the
//! command-line client as a separate process (including a read as of a time), kills one member
//! with SIGKILL, and checks that every key is still there at every shard's surviving members.
//! Then it kills every member, restarts them all from their logs (the same commands, in reverse
//! order), and checks every key and the read as of a time again.
//! With `--shm` the members' views run over shared memory (joins and the client still use TCP).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use derecho::driver::GroupMemberConfig;
use derecho::protocol::{NodeId, Version};
use derecho::rpc::{ExternalClient, ExternalHandle, Service};
use derecho::{Builder, available_cores};
use derecho_examples::kv::{KvStore, KvStoreExternal, shard_of};

const USAGE: &str = "\
usage: kv demo [--shm]
       kv member [--config FILE] [--set key=value ...] [--persist DIR]
       kv --contact ADDR put KEY VALUE
       kv --contact ADDR get KEY [--at VERSION | --time MICROS]
       kv --contact ADDR view";

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kv.toml");
const SHARDS: u16 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("demo") if args.len() == 1 => demo(false),
        Some("demo") if args.len() == 2 && args[1] == "--shm" => demo(true),
        Some("member") => member(&args[1..]),
        Some("--contact") if args.len() >= 3 => cli(&args[1], &args[2..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One member: hosts the store in subgroup 0, prints its address, runs until killed.
fn member(args: &[String]) -> Result<(), String> {
    let mut config = PathBuf::from(CONFIG);
    let mut sets = Vec::new();
    let mut persist: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().ok_or("--config needs a file")?.into(),
            "--persist" => persist = Some(it.next().ok_or("--persist needs a directory")?.into()),
            "--set" => sets.push(it.next().ok_or("--set needs key=value")?.clone()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let config = GroupMemberConfig::load(&config, std::env::vars(), &sets).map_err(|e| e.to_string())?;
    let executor = config.executor().build().map_err(|e| e.to_string())?;
    executor.block_on(async move {
        // ANCHOR: host
        let service = Service::new();
        service.host(derecho::protocol::SubgroupId(0), KvStore::default);
        if let Some(dir) = &persist {
            service.persist_to(dir).map_err(|e| format!("--persist {}: {e}", dir.display()))?;
        }
        let group = service.start_or_join(config.builder(), config.contact).await.map_err(|e| e.to_string())?;
        // ANCHOR_END: host
        println!("member {}: listening {}", config.me.0, group.local_addr());
        loop {
            if let derecho::driver::GroupEvent::ViewInstalled(c) = group.next_event().await {
                let shards: Vec<String> = c
                    .view
                    .shards
                    .iter()
                    .map(|s| format!("shard {}: {:?}", s.id.shard.0, s.members.iter().map(|n| n.0).collect::<Vec<_>>()))
                    .collect();
                println!("member {}: view {} {}", config.me.0, c.view.id.0, shards.join(", "));
            }
            // A member in a store keeps serving; members the group removed stop here.
            if group.stopped().is_some() {
                return Ok(());
            }
        }
    })
}

// ANCHOR: external
async fn connect(contact: SocketAddr) -> Result<Rc<ExternalClient>, String> {
    let local = "127.0.0.1:0".parse().expect("an address");
    ExternalClient::connect("kv-demo", vec![contact], local, Duration::from_secs(3))
        .await
        .map(Rc::new)
        .map_err(|e| e.to_string())
}

fn store(client: &Rc<ExternalClient>, key: &str) -> KvStoreExternal {
    KvStoreExternal::new(ExternalHandle::new(client.clone(), shard_of(key, SHARDS)))
}
// ANCHOR_END: external

/// The command-line client.
fn cli(contact: &str, args: &[String]) -> Result<(), String> {
    let contact: SocketAddr = contact.parse().map_err(|_| format!("--contact {contact:?} is not an address"))?;
    let executor = Builder::new().build().map_err(|e| e.to_string())?;
    executor.block_on(async move {
        let client = connect(contact).await?;
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["view"] => {
                let v = client.view().ok_or("no view")?;
                println!("view {}: members {:?}", v.id.0, v.members.iter().map(|n| n.0).collect::<Vec<_>>());
                for s in &v.shards {
                    println!(
                        "  shard {}: members {:?}",
                        s.id.shard.0,
                        s.members.iter().map(|n| n.0).collect::<Vec<_>>()
                    );
                }
            }
            ["put", key, value] => {
                let (version, _) = store(&client, key).put(key, value.as_bytes()).await.map_err(|e| e.to_string())?;
                println!("put {key} = {value} at version {version}");
            }
            ["get", key] => match store(&client, key).get(None, key).await.map_err(|e| e.to_string())? {
                Some((v, value)) => {
                    println!("{key} = {} (version {})", String::from_utf8_lossy(&value), Version::from_u64(v))
                }
                None => println!("{key} has no value"),
            },
            ["get", key, "--at", at] => {
                let at: u64 = at.parse().map_err(|_| format!("--at {at:?} is not a number"))?;
                match store(&client, key).get_at(None, key, at).await.map_err(|e| e.to_string())? {
                    Some(value) => {
                        println!("{key} = {} at version {}", String::from_utf8_lossy(&value), Version::from_u64(at))
                    }
                    None => println!("{key} had no value at version {}", Version::from_u64(at)),
                }
            }
            ["get", key, "--time", t] => {
                let t: u64 = t.parse().map_err(|_| format!("--time {t:?} is not a number of microseconds"))?;
                match store(&client, key).get_at_time(None, key, t).await.map_err(|e| e.to_string())? {
                    Ok(Some((v, value))) => println!(
                        "{key} = {} at time {t} (version {})",
                        String::from_utf8_lossy(&value),
                        Version::from_u64(v)
                    ),
                    Ok(None) => println!("{key} had no value at time {t}"),
                    Err(e) => return Err(format!("get {key} at time {t}: {e}")),
                }
            }
            _ => return Err(format!("unknown command {args:?}\n{USAGE}")),
        }
        Ok(())
    })
}

fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

struct Members(Vec<(u32, Child)>);

impl Drop for Members {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory of the demo (views over shared memory, logs), removed with it.
struct RemovedOnDrop(Option<PathBuf>);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn print_shards(view: &derecho::protocol::View, when: &str) {
    for s in &view.shards {
        println!(
            "client: {when}shard {} has members {:?}",
            s.id.shard.0,
            s.members.iter().map(|n| n.0).collect::<Vec<_>>()
        );
    }
}

/// Reads the demo's 100 keys at every member of their shard: how many hold the value written.
async fn check_keys(client: &Rc<ExternalClient>) -> Result<usize, String> {
    let mut intact = 0;
    for i in 0..100 {
        let key = format!("key{i}");
        let want = if i == 7 { b"seven, again".to_vec() } else { format!("value{i}").into_bytes() };
        let s = shard_of(&key, SHARDS);
        let view = client.view().ok_or("no view")?;
        let members = view.shards.iter().find(|x| x.id == s).map(|x| x.members.clone()).unwrap_or_default();
        for m in members {
            let got = store(client, &key).get(Some(m), &key).await.map_err(|e| e.to_string())?;
            if got.map(|(_, v)| v) != Some(want.clone()) {
                return Err(format!("{key} is wrong at member {}", m.0));
            }
        }
        intact += 1;
    }
    Ok(intact)
}

/// `n` loopback addresses free when probed, on ports below the kernel's ephemeral range: the
/// members restart on the addresses they had, and a port the kernel may hand to an outgoing
/// connection could be taken between their kill and their restart.
fn member_addresses(n: usize) -> Result<Vec<SocketAddr>, String> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (from, to) = (10_000u32, ephemeral_low.min(65_536));
    if to <= from + n as u32 {
        return Err(format!("no ports below the ephemeral range (it starts at {ephemeral_low})"));
    }
    let span = to - from;
    // Started at a point of the range that differs between demos run at once.
    let start = std::process::id().wrapping_mul(7_919) % span;
    let mut out = Vec::with_capacity(n);
    for k in 0..span {
        let port = u16::try_from(from + (start + k) % span).expect("below 65536");
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            out.push(l.local_addr().map_err(|e| e.to_string())?);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    Err(format!("fewer than {n} free ports between {from} and {to}"))
}

/// The demo: four members, keys written from outside, the command-line client, a failure, and
/// a restart of every member from its logs.
fn demo(shm: bool) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let addrs = member_addresses(4)?;
    let cores = available_cores();
    let (tx, rx) = mpsc::channel::<String>();
    // Declared before the members: removed after they are killed (they leave their files).
    let shm_dir = RemovedOnDrop(shm.then(|| PathBuf::from(format!("/dev/shm/derecho-kv-demo-{}", std::process::id()))));
    if let Some(d) = &shm_dir.0 {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // Every member logs the store's updates (removed with the demo).
    let logs = RemovedOnDrop(Some(std::env::temp_dir().join(format!("derecho-kv-demo-logs-{}", std::process::id()))));
    let mut members = Members(Vec::new());
    let over = if shm { "shared memory" } else { "loopback TCP" };
    println!("kv demo: four member processes host a key-value store in two shards, over {over}");
    // Member `i`, with its output forwarded to `rx`; the same command restarts it from its logs.
    let spawn = |i: u32| -> Result<Child, String> {
        let mut cmd = Command::new(&exe);
        cmd.args(["member", "--set", &format!("me={i}"), "--set", &format!("listen=\"{}\"", addrs[i as usize])]);
        if i > 0 {
            cmd.args(["--set", &format!("contact=\"{}\"", addrs[0])]);
        }
        if !cores.is_empty() {
            cmd.args(["--set", &format!("core={}", cores[i as usize % cores.len()])]);
        }
        if let Some(d) = &shm_dir.0 {
            cmd.args(["--set", "transport=\"shm\"", "--set", &format!("shm_dir=\"{}\"", d.display())]);
        }
        cmd.arg("--persist").arg(logs.0.as_ref().expect("a directory").join(format!("member-{i}")));
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().map_err(|e| e.to_string())?;
        let out = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(child)
    };
    for i in 0..4u32 {
        members.0.push((i, spawn(i)?));
        // Each joins once the previous one is in.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| format!("member {i} did not start"))?;
            println!("{line}");
            if line.starts_with(&format!("member {i}: listening")) {
                break;
            }
        }
    }
    let executor = Builder::new().build().map_err(|e| e.to_string())?;
    let result = executor.block_on(async {
        let client = connect(addrs[0]).await?;
        // Wait until the view has all four members.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.view().is_none_or(|v| v.members.len() < 4) {
            if Instant::now() > deadline {
                return Err("the group did not reach four members".to_string());
            }
            derecho::runtime::time::sleep(Duration::from_millis(50)).await;
            let _ = client.refresh_view().await;
        }
        print_shards(&client.view().expect("a view"), "");
        // Write 100 keys from outside the group; each put is an ordered call in the key's shard.
        let t0 = Instant::now();
        let mut first_versions = Vec::new();
        for i in 0..100 {
            let key = format!("key{i}");
            let (v, _) =
                store(&client, &key).put(&key, format!("value{i}").as_bytes()).await.map_err(|e| e.to_string())?;
            first_versions.push(v);
        }
        println!(
            "client: 100 puts in {:.1} ms (each relayed by a member and applied by its shard)",
            t0.elapsed().as_secs_f64() * 1e3
        );
        // A time between key7's two values, for a read by time below.
        derecho::runtime::time::sleep(Duration::from_millis(2)).await;
        let between = micros_now();
        derecho::runtime::time::sleep(Duration::from_millis(2)).await;
        let (v2, _) = store(&client, "key7").put("key7", b"seven, again").await.map_err(|e| e.to_string())?;
        let old =
            store(&client, "key7").get_at(None, "key7", first_versions[7].as_u64()).await.map_err(|e| e.to_string())?;
        println!(
            "client: key7 is now \"seven, again\" (version {v2}); at version {} it was {:?}",
            first_versions[7],
            old.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        Ok::<_, String>((client, between))
    });
    let (client, between) = result?;
    // The command-line client, as a separate process.
    let between_arg = between.to_string();
    let commands = [
        vec!["get", "key7"],
        vec!["get", "key7", "--time", &between_arg],
        vec!["put", "fruit", "plum"],
        vec!["get", "fruit"],
        vec!["view"],
    ];
    for cmd in commands {
        // A read by time waits (bounded) until that time is durable at every member.
        let deadline = Instant::now() + Duration::from_secs(5);
        let out = loop {
            let out = Command::new(&exe)
                .arg("--contact")
                .arg(addrs[1].to_string())
                .args(&cmd)
                .output()
                .map_err(|e| e.to_string())?;
            let early = String::from_utf8_lossy(&out.stderr).contains("stable time");
            if out.status.success() || !early || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        print!("$ kv --contact {} {}\n{}", addrs[1], cmd.join(" "), String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            return Err(format!("kv {cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    // A member fails; the store keeps every key.
    let victim = 3u32;
    members.0.iter_mut().find(|(i, _)| *i == victim).expect("a member").1.kill().map_err(|e| e.to_string())?;
    println!("launcher: killed member {victim} (SIGKILL)");
    executor.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                return Err("the group did not remove the killed member".to_string());
            }
            if let Ok(v) = client.refresh_view().await
                && !v.members.contains(&NodeId(victim))
            {
                print_shards(&v, "after the failure, ");
                break;
            }
            derecho::runtime::time::sleep(Duration::from_millis(20)).await;
        }
        let intact = check_keys(&client).await?;
        println!("launcher: all {intact} keys intact at every surviving member of their shard");
        Ok::<_, String>(())
    })?;
    // Every member stops at once; the store survives on their disks. Restarted with the same
    // commands, in reverse order, each rebuilds its replicas from its logs; member 0 (started
    // without a contact) leads the restart, and each shard resumes from its longest log.
    for (_, c) in &mut members.0 {
        c.kill().map_err(|e| e.to_string())?;
        c.wait().map_err(|e| e.to_string())?;
    }
    members.0.clear();
    drop(client);
    println!("launcher: killed every member (SIGKILL); restarting them from their logs, member 0 last");
    for i in (0..4u32).rev() {
        members.0.push((i, spawn(i)?));
    }
    executor.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // No member answers before the restart leader has its quorum.
        let client = loop {
            if let Ok(c) = connect(addrs[1]).await
                && c.view().is_some_and(|v| v.members.len() == 4)
            {
                break c;
            }
            if Instant::now() > deadline {
                return Err("the group did not restart with four members".to_string());
            }
            derecho::runtime::time::sleep(Duration::from_millis(50)).await;
        };
        let view = client.view().expect("a view");
        println!("client: the group restarted in view {}", view.id.0);
        print_shards(&view, "after the restart, ");
        let intact = check_keys(&client).await?;
        println!("launcher: all {intact} keys intact at every member of their shard after the restart");
        let again = store(&client, "key7").get_at_time(None, "key7", between).await.map_err(|e| e.to_string())?;
        let again = again.map_err(|e| format!("key7 at time {between} after the restart: {e}"))?;
        println!(
            "client: after the restart, key7 at time {between} is still {:?}",
            again.map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
        );
        Ok(())
    })?;
    drop(members);
    Ok(())
}
