//! `kv`: a sharded key-value store replicated with ordered calls, and a command-line client that
//! talks to it from outside the group.
//!
//! ```text
//! cargo run --release -p derecho-examples --bin kv -- demo [--shm]          # the whole demo
//! cargo run --release -p derecho-examples --bin kv -- certs DIR [--members N]  # throw-away certificates
//! cargo run --release -p derecho-examples --bin kv -- member --tls-dir DIR --set me=0 --set listen=\"127.0.0.1:7000\"
//! cargo run --release -p derecho-examples --bin kv -- --tls-dir DIR --contact 127.0.0.1:7000 put KEY VALUE
//! cargo run --release -p derecho-examples --bin kv -- --contact 127.0.0.1:7000 get KEY [--at VERSION | --time TIME]
//! cargo run --release -p derecho-examples --bin kv -- --contact 127.0.0.1:7000 view
//! cargo run --release -p derecho-examples --bin kv -- status [--watch] METRICS_ADDRESS...
//! ```
//!
//! `demo` starts four member processes (two shards of the store, each member logging the
//! store's updates to disk with `--persist`), writes keys through the external client, runs the
//! command-line client as a separate process (including a read as of a time), kills one member
//! with SIGKILL, and checks that every key is still there at every shard's surviving members.
//! Then it kills every member, restarts them all from their logs (the same commands, in reverse
//! order), checks every key and the read as of a time again, shows the members' status from
//! their metrics listeners, and stops one member with SIGTERM: it leaves the group, and the
//! others install the next view without waiting to detect a failure.
//! With `--shm` the members' views run over shared memory (joins and the client still use TCP).
//!
//! A member logs what it does on standard error (`RUST_LOG`, default `info`;
//! `DERECHO_LOG_FORMAT=json` for JSON lines). SIGTERM or Ctrl-C makes it leave the group; a
//! second one ends it at once.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use derecho::driver::{GroupEvent, GroupMemberConfig, Signals, resolve_address};
use derecho::persist::Hlc;
use derecho::protocol::{NodeId, StopReason, Version};
use derecho::rpc::{ClientError, ClientView, ExternalClient, ExternalHandle, RemoteKind, Service};
use derecho::runtime::tls::{DevCa, TlsIdentity};
use derecho::{Builder, available_cores};
use derecho_examples::kv::{KvStore, KvStoreExternal, shard_of};
use derecho_examples::status;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kv.toml");
const SHARDS: u16 = 2;

/// A sharded key-value store replicated with derecho, and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "kv", version)]
struct Cli {
    /// A member of the group that client commands talk to (HOST:PORT; repeat to give several);
    /// for `member`, the member to join through.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    contact: Vec<String>,
    /// Mutual TLS with the files of DIR (as `kv certs` writes them). Client commands present
    /// DIR/client.pem and DIR/client.key; `member` presents DIR/node-ME.pem and DIR/node-ME.key
    /// (`--set tls.dir=DIR`). Both trust DIR/ca.pem.
    /// A member needs this, `[tls]` in its file, or `--set insecure=true` (plaintext).
    #[arg(long, global = true, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the whole demo: four members on this machine, writes, a failure, a restart from
    /// the logs, the members' status and a graceful leave.
    Demo {
        /// Run the members' views over shared memory instead of TCP.
        #[arg(long)]
        shm: bool,
    },
    /// Runs one member of the store until it is stopped (SIGTERM or Ctrl-C: it leaves the group).
    Member {
        /// The member's configuration file (keys: `derecho::driver::GroupMemberConfig`).
        #[arg(long, value_name = "FILE", default_value = CONFIG)]
        config: PathBuf,
        /// Overrides a configuration key (TOML value), after the file and `DERECHO_CFG__*`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Logs the store's updates under this directory; a member restarted with it recovers.
        #[arg(long, value_name = "DIR")]
        persist: Option<PathBuf>,
    },
    /// Stores VALUE under KEY; prints the version it was stored at. With members that persist
    /// (`--persist`), it returns once the value is durable at every member of its shard.
    Put {
        /// The key.
        key: String,
        /// The value (text).
        value: String,
    },
    /// Reads KEY: its latest value, or its value at a version or at a time.
    Get {
        /// The key.
        key: String,
        /// The value at this version (as printed: v2.17).
        #[arg(long, value_name = "VERSION", conflicts_with = "time")]
        at: Option<Version>,
        /// The value at this time: RFC 3339 (2026-12-06T21:28:12.5Z), `now`, or microseconds
        /// since the Unix epoch.
        #[arg(long, value_name = "TIME")]
        time: Option<TimeArg>,
    },
    /// Shows the group's current view: its members and the members of each shard.
    View,
    /// Runs a closed-loop load: N puts (or gets) in flight for a while, over the keys
    /// `bench0`..; prints calls per second and latency percentiles.
    Bench {
        /// Calls in flight at once.
        #[arg(long, default_value_t = 64, value_name = "N")]
        in_flight: usize,
        /// How long, in seconds.
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        secs: f64,
        /// Bytes per value.
        #[arg(long, default_value_t = 100, value_name = "BYTES")]
        size: usize,
        /// Distinct keys.
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// Gets instead of puts.
        #[arg(long)]
        gets: bool,
    },
    /// Writes a throw-away certificate authority and certificates into DIR, for members and
    /// clients on machines you trust (a development mode, not a CA): ca.pem, node-N.pem and
    /// node-N.key for each member N, client.pem and client.key. Its key is not kept, so it
    /// issues nothing later: run it again for more members. Keys are readable by their owner only.
    Certs {
        /// The directory (created if missing).
        dir: PathBuf,
        /// Members 0 to N-1.
        #[arg(long, default_value_t = 4, value_name = "N")]
        members: u32,
    },
    /// Shows members' state as a table, read from their metrics listeners
    /// (`metrics_listen` in their configuration).
    Status {
        /// The members' metrics addresses (HOST:PORT).
        #[arg(required = true, value_name = "HOST:PORT")]
        metrics: Vec<String>,
        /// Refresh the table until interrupted, with rates.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
    },
}

/// A time on the command line: RFC 3339, `now`, or microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
struct TimeArg(u64);

impl std::str::FromStr for TimeArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "now" {
            return Ok(TimeArg(micros_now()));
        }
        if let Ok(micros) = s.parse::<u64>() {
            return Ok(TimeArg(micros));
        }
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
            format!("{s:?} is not a time ({e}): give RFC 3339 (2026-12-06T21:28:12Z), now, or microseconds")
        })?;
        let micros = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?.as_micros();
        Ok(TimeArg(micros as u64))
    }
}

impl std::fmt::Display for TimeArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The same text `--time` reads back (a time's logical counter is zero here).
        write!(f, "{}", Hlc(self.0 << Hlc::LOGICAL_BITS))
    }
}

fn main() -> ExitCode {
    derecho::logging::init();
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Demo { shm } => demo(shm).map(|()| ExitCode::SUCCESS),
        Cmd::Member { config, mut sets, persist } => {
            // `kv member --contact ADDR` joins through ADDR (as `--set contact=ADDR` does).
            match cli.contact.as_slice() {
                [] => {}
                [one] => sets.push(format!("contact={one:?}")),
                _ => Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, "a member joins through one --contact")
                    .exit(),
            }
            if let Some(d) = &cli.tls_dir {
                sets.push(format!("tls.dir={:?}", d.display().to_string()));
            }
            member(config, &sets, persist)
        }
        Cmd::Certs { dir, members } => certs(&dir, members).map(|()| ExitCode::SUCCESS),
        Cmd::Status { metrics, watch, interval } => {
            status::run(&metrics, watch, Duration::from_secs_f64(interval.max(0.1)))
        }
        client => {
            if cli.contact.is_empty() {
                Cli::command()
                    .error(clap::error::ErrorKind::MissingRequiredArgument, "this command needs --contact HOST:PORT")
                    .exit();
            }
            run_client(&cli.contact, cli.tls_dir.as_deref(), client)
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One member: hosts the store in subgroup 0, prints its address and views, runs until the
/// group removes it or a signal makes it leave.
fn member(config: PathBuf, sets: &[String], persist: Option<PathBuf>) -> Result<ExitCode, String> {
    // Before any thread starts: every thread then leaves SIGTERM and SIGINT to this descriptor.
    let signals = Signals::termination().map_err(|e| format!("cannot handle signals: {e}"))?;
    let config = GroupMemberConfig::load(&config, std::env::vars(), sets).map_err(|e| e.to_string())?;
    let executor = config.executor().build().map_err(|e| e.to_string())?;
    executor.block_on(async move {
        // ANCHOR: host
        let service = Service::new();
        service.host(derecho::protocol::SubgroupId(0), KvStore::default);
        if let Some(dir) = &persist {
            service.persist_to(dir).map_err(|e| format!("--persist: {e}"))?;
        }
        let group = service.start_or_join(config.builder(), config.contact).await.map_err(|e| e.to_string())?;
        // ANCHOR_END: host
        println!("member {}: listening {}", config.me.0, group.local_addr());
        if let Some(a) = group.metrics_addr() {
            println!("member {}: metrics at http://{a}/metrics", config.me.0);
        }
        let events = async {
            loop {
                if let GroupEvent::ViewInstalled(c) = group.next_event().await {
                    // Clients subscribed to "view" hear of every view this member installs.
                    group
                        .sender()
                        .notify("view", format!("view {} members {}", c.view.id.0, ids(&c.view.members)).as_bytes());
                    let shards: Vec<String> =
                        c.view.shards.iter().map(|s| format!("shard {}: {}", s.id.shard.0, ids(&s.members))).collect();
                    match &c.inadequate {
                        Some(why) => println!("member {}: view {} is inadequate: {why}", config.me.0, c.view.id.0),
                        None => println!("member {}: view {} {}", config.me.0, c.view.id.0, shards.join(", ")),
                    }
                }
                // A member in a store keeps serving; members the group removed stop here. One that
                // left on a signal is finished by the shutdown below.
                match group.stopped() {
                    Some(StopReason::Left(_)) => std::future::pending::<()>().await,
                    Some(reason) => return reason,
                    None => {}
                }
            }
        };
        // ANCHOR: shutdown
        let shutdown = group.leave_on_signal(&signals, Duration::from_secs(10));
        match futures::future::select(std::pin::pin!(events), std::pin::pin!(shutdown)).await {
            futures::future::Either::Left((reason, _)) => Err(format!("this member stopped: {reason}")),
            futures::future::Either::Right((how, _)) => {
                println!("member {}: {how}", config.me.0);
                Ok(ExitCode::from(how.exit_code()))
            }
        }
        // ANCHOR_END: shutdown
    })
}

/// Node ids as `[0, 1, 2]`.
fn ids(members: &[NodeId]) -> String {
    format!("[{}]", members.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(", "))
}

// ANCHOR: external
async fn connect(contacts: Vec<SocketAddr>, tls: Option<TlsIdentity>) -> Result<ExternalClient, String> {
    let b =
        ExternalClient::builder("kv-demo", contacts.iter().map(SocketAddr::to_string)).timeout(Duration::from_secs(10));
    let b = match tls {
        Some(id) => b.tls(id),
        None => b,
    };
    b.connect().await.map_err(|e| e.to_string())
}

/// A throw-away authority's certificates for members 0..`members` and a client, in `dir`.
fn write_certs(dir: &std::path::Path, members: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = DevCa::new().map_err(|e| e.to_string())?;
    ca.write_nodes(dir, 0..members).map_err(|e| e.to_string())?;
    ca.write(dir, "client", "client.kv").map_err(|e| e.to_string())?;
    Ok(())
}

/// `kv certs`.
fn certs(dir: &std::path::Path, members: u32) -> Result<(), String> {
    write_certs(dir, members)?;
    println!(
        "wrote ca.pem, node-0 to node-{} (.pem, .key) and client (.pem, .key) in {}",
        members.saturating_sub(1),
        dir.display()
    );
    Ok(())
}

/// The client's TLS identity from `--tls-dir` (`ca.pem`, `client.pem`, `client.key`).
fn client_tls(dir: Option<&std::path::Path>) -> Result<Option<TlsIdentity>, String> {
    let Some(d) = dir else { return Ok(None) };
    TlsIdentity::from_pem_files(&d.join("ca.pem"), &d.join("client.pem"), &d.join("client.key"))
        .map(Some)
        .map_err(|e| format!("--tls-dir: {e}"))
}

fn store(client: &ExternalClient, key: &str) -> KvStoreExternal {
    KvStoreExternal::new(ExternalHandle::new(client.clone(), shard_of(key, SHARDS)))
}
// ANCHOR_END: external

/// A client error as a user reads it: a value over the group's limit says so.
fn explain(e: ClientError) -> String {
    match &e {
        ClientError::Remote { kind: RemoteKind::TooLarge, reason } => format!(
            "the group refused the call: {reason}. Larger values need a larger limits.payload_len_max, the same in \
             every member's configuration"
        ),
        _ => e.to_string(),
    }
}

/// The command-line client.
fn run_client(contacts: &[String], tls_dir: Option<&std::path::Path>, command: Cmd) -> Result<ExitCode, String> {
    let tls = client_tls(tls_dir)?;
    let contacts = contacts
        .iter()
        .map(|c| resolve_address(c).map_err(|e| format!("--contact: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let executor = Builder::new().build().map_err(|e| e.to_string())?;
    executor.block_on(async move {
        let client = connect(contacts, tls).await?;
        match command {
            Cmd::View => {
                let v = client.view().ok_or("no view")?;
                println!("view {}: members {}", v.id.0, member_ids(&v));
                for (shard, members) in &v.shards {
                    println!("  shard {}: members {}", shard.shard.0, ids(members));
                }
            }
            Cmd::Put { key, value } => {
                let (version, _) = store(&client, &key).put(&key, value.as_bytes()).await.map_err(explain)?;
                println!("put {key} = {value} at version {version}");
            }
            Cmd::Get { key, at: None, time: None } => {
                match store(&client, &key).get(None, &key).await.map_err(explain)? {
                    Some((v, value)) => {
                        println!("{key} = {} (version {})", String::from_utf8_lossy(&value), Version::from_u64(v))
                    }
                    None => println!("{key} has no value"),
                }
            }
            Cmd::Get { key, at: Some(at), .. } => {
                match store(&client, &key).get_at(None, &key, at.as_u64()).await.map_err(explain)? {
                    Some(value) => println!("{key} = {} at version {at}", String::from_utf8_lossy(&value)),
                    None => println!("{key} had no value at version {at}"),
                }
            }
            Cmd::Get { key, time: Some(t), .. } => {
                match store(&client, &key).get_at_time(None, &key, t.0).await.map_err(explain)? {
                    Ok(Some((v, value))) => println!(
                        "{key} = {} at time {t} (version {})",
                        String::from_utf8_lossy(&value),
                        Version::from_u64(v)
                    ),
                    Ok(None) => println!("{key} had no value at time {t}"),
                    Err(e) => return Err(format!("get {key} at time {t}: {e}")),
                }
            }
            Cmd::Bench { in_flight, secs, size, keys, gets } => {
                bench(&client, in_flight.max(1), Duration::from_secs_f64(secs), size, keys.max(1), gets).await?;
            }
            Cmd::Demo { .. } | Cmd::Member { .. } | Cmd::Certs { .. } | Cmd::Status { .. } => {
                unreachable!("not a client command")
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `kv bench`: `in_flight` tasks each calling in a loop until `secs` pass.
async fn bench(
    client: &ExternalClient,
    in_flight: usize,
    secs: Duration,
    size: usize,
    keys: usize,
    gets: bool,
) -> Result<(), String> {
    let value = vec![b'x'; size];
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let (client, value) = (client.clone(), value.clone());
        tasks.push(derecho::spawn(async move {
            let mut samples = Vec::new();
            let mut i = t;
            while Instant::now() < deadline {
                let key = format!("bench{}", i % keys);
                i += in_flight;
                let t0 = Instant::now();
                if gets {
                    store(&client, &key).get(None, &key).await.map_err(explain)?;
                } else {
                    store(&client, &key).put(&key, &value).await.map_err(explain)?;
                }
                samples.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, String>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let at =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0.0);
    println!(
        "{} {} of {size} bytes, {in_flight} in flight: {:.0} calls/s; latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        all.len(),
        if gets { "gets" } else { "puts" },
        all.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        all.last().copied().unwrap_or(0.0)
    );
    Ok(())
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

fn print_shards(view: &ClientView, when: &str) {
    for (shard, members) in &view.shards {
        println!("client: {when}shard {} has members {}", shard.shard.0, ids(members));
    }
}

/// The members of a view as a client sees it, as `[0, 1, 2]`.
fn member_ids(view: &ClientView) -> String {
    ids(&view.members.iter().map(|m| m.0).collect::<Vec<_>>())
}

/// Reads the demo's 100 keys at every member of their shard: how many hold the value written.
async fn check_keys(client: &ExternalClient) -> Result<usize, String> {
    let mut intact = 0;
    for i in 0..100 {
        let key = format!("key{i}");
        let want = if i == 7 { b"seven, again".to_vec() } else { format!("value{i}").into_bytes() };
        let s = shard_of(&key, SHARDS);
        let view = client.view().ok_or("no view")?;
        let members = view.shard(s).map(<[NodeId]>::to_vec).unwrap_or_default();
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
    // Four listeners, then four metrics listeners.
    let addrs = member_addresses(8)?;
    let cores = available_cores();
    let (tx, rx) = mpsc::channel::<String>();
    // Declared before the members: removed after they are killed (they leave their files).
    let shm_dir = RemovedOnDrop(shm.then(|| PathBuf::from(format!("/dev/shm/derecho-kv-demo-{}", std::process::id()))));
    if let Some(d) = &shm_dir.0 {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // Every member logs the store's updates (removed with the demo).
    let logs = RemovedOnDrop(Some(std::env::temp_dir().join(format!("derecho-kv-demo-logs-{}", std::process::id()))));
    // Development mode: a throw-away authority and certificates for the members and the client,
    // removed with the demo. Every connection runs mutual TLS.
    let tls = RemovedOnDrop(Some(std::env::temp_dir().join(format!("derecho-kv-demo-tls-{}", std::process::id()))));
    let tls_dir = tls.0.clone().expect("a directory");
    write_certs(&tls_dir, 4)?;
    let client_id = client_tls(Some(&tls_dir))?;
    let mut members = Members(Vec::new());
    let over = if shm { "shared memory" } else { "loopback TCP" };
    println!("kv demo: four member processes host a key-value store in two shards, over {over}");
    println!(
        "kv demo: mutual TLS on every connection, with a throw-away authority and certificates in {}",
        tls_dir.display()
    );
    // Member `i`, with its output forwarded to `rx`; the same command restarts it from its logs.
    let spawn = |i: u32| -> Result<Child, String> {
        let mut cmd = Command::new(&exe);
        cmd.args(["member", "--set", &format!("me={i}"), "--set", &format!("listen=\"{}\"", addrs[i as usize])]);
        cmd.args(["--set", &format!("metrics_listen=\"{}\"", addrs[4 + i as usize])]);
        // The members' own logs (RUST_LOG) would interleave with the demo's story: warnings only,
        // unless asked for.
        cmd.env("RUST_LOG", derecho_examples::child_log_filter());
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
        cmd.arg("--tls-dir").arg(&tls_dir);
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
        let client = connect(vec![addrs[0]], client_id.clone()).await?;
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
            "client: 100 puts in {:.1} ms (each relayed by a member, answered once durable at every member of its shard)",
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
            "client: key7 is now \"seven, again\" (version {v2}); at version {} it was {}",
            first_versions[7],
            shown(old.as_deref())
        );
        Ok::<_, String>((client, between, first_versions[7]))
    });
    let (client, between, key7_first) = result?;
    // The command-line client, as a separate process.
    let between_arg = TimeArg(between).to_string();
    let at_arg = key7_first.to_string();
    let commands = [
        vec!["get", "key7"],
        vec!["get", "key7", "--at", &at_arg],
        vec!["get", "key7", "--time", &between_arg],
        vec!["put", "fruit", "plum"],
        vec!["get", "fruit"],
        vec!["view"],
        vec!["bench", "--secs", "1", "--in-flight", "64"],
    ];
    for cmd in commands {
        // A read by time waits (bounded) until that time is durable at every member.
        let deadline = Instant::now() + Duration::from_secs(5);
        let out = loop {
            let out = Command::new(&exe)
                .arg("--contact")
                .arg(addrs[1].to_string())
                .arg("--tls-dir")
                .arg(&tls_dir)
                .args(&cmd)
                .output()
                .map_err(|e| e.to_string())?;
            let early = String::from_utf8_lossy(&out.stderr).contains("stable time");
            if out.status.success() || !early || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        print!("$ kv --contact {} --tls-dir DIR {}\n{}", addrs[1], cmd.join(" "), String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            return Err(format!("kv {cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    // A value above the group's message limit is refused, and the error says which limit.
    let big = "x".repeat(20 << 10);
    let out = Command::new(&exe)
        .args(["--contact", &addrs[1].to_string(), "--tls-dir"])
        .arg(&tls_dir)
        .args(["put", "big", &big])
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stderr);
    print!("$ kv --contact {} --tls-dir DIR put big <20 KiB of x>\n{said}", addrs[1]);
    if out.status.success() || !said.contains("limits.payload_len_max") {
        return Err(format!("a 20 KiB put was not refused with the limit named: {said}"));
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
                && !v.members.iter().any(|m| m.0 == NodeId(victim))
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
            if let Ok(c) = connect(vec![addrs[1]], client_id.clone()).await
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
            "client: after the restart, key7 at time {} is still {}",
            TimeArg(between),
            shown(again.as_ref().map(|(_, v)| v.as_slice()))
        );
        Ok(())
    })?;
    // What an operator sees: every member's status, from its metrics listener.
    let metrics: Vec<String> = addrs[4..].iter().map(SocketAddr::to_string).collect();
    let out = Command::new(&exe).arg("status").args(&metrics).output().map_err(|e| e.to_string())?;
    print!("$ kv status {}\n{}", metrics.join(" "), String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!("kv status failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // A graceful stop: SIGTERM makes member 2 leave; the others install the next view at once.
    let leaver = 2u32;
    let started = Instant::now();
    let child = &mut members.0.iter_mut().find(|(i, _)| *i == leaver).expect("a member").1;
    // SAFETY: `kill` with a child's pid and a signal number has no memory effects.
    if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
        return Err(format!("cannot signal member {leaver}: {}", std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("member {leaver} did not exit within 20 s of SIGTERM"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        return Err(format!("member {leaver} exited with {status} after SIGTERM"));
    }
    let client = executor.block_on(connect(vec![addrs[0]], client_id.clone()))?;
    let view = client.view().ok_or("no view")?;
    if view.members.iter().any(|m| m.0 == NodeId(leaver)) {
        return Err(format!("member {leaver} exited but view {} still has it", view.id.0));
    }
    println!(
        "launcher: member {leaver} left on SIGTERM and exited 0 in {:.0} ms; view {} has members {}",
        started.elapsed().as_secs_f64() * 1e3,
        view.id.0,
        member_ids(&view)
    );
    drop(members);
    Ok(())
}

/// A value read back, as text (`none` when there was none).
fn shown(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "none".to_string(), |b| format!("\"{}\"", String::from_utf8_lossy(b)))
}
