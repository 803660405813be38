//! One member process of the key-value store for `tests/kv_linearizable.rs`: it hosts the store,
//! runs two clients in phases the test starts on standard input, and writes every invocation
//! and response to a history file as it happens (one `write` per line, so a member killed with
//! SIGKILL leaves every line it wrote).
//!
//! It also serves `tests/kv_restart.rs`: with `--persist DIR` the store is logged there, and
//! the same command restarts the member from its logs after the whole group was killed.
//!
//! ```text
//! kv_member --me N --history FILE --seed S --ops K [--contact ADDR] [--shm-dir DIR] [--persist DIR]
//! ```
//!
//! Standard output: `listening ADDR` (before the member starts, joins or restarts), `started
//! in view V members A,B,...` (it started, joined or restarted), `ready` (the view has three members), then `phase P done` after each phase. Standard input:
//! `phase P [pace_us [stall_after]]` runs phase P (K operations per client, with `pace_us`
//! between them; with `stall_after`, each client prints `stalling` as it starts operation
//! `stall_after` and never goes past it: the member is then killed with calls in flight),
//! `exit` (or end of input) closes the member.
//!
//! With `--persist`: `load` starts four writers that put unique values until the member is
//! killed, and write `durable KEY VALUE VERSION` to the history once a put's version is
//! persisted at every member; `verify FILE...` checks that this member's replica holds every
//! such put of those files at its version and prints `verified N` (or `lost ...` and exits
//! with status 1); `digest` prints `digest KEY@VERSION=VALUE ...`, every key's latest value
//! (`KEY@-` for none).
//!
//! History lines, times from `CLOCK_MONOTONIC` (one clock for every process of the host):
//! `inv CLIENT N KEY put VALUE T`, `inv CLIENT N KEY get T`, `ok CLIENT N T` (a put completed),
//! `got CLIENT N T VALUE|-` (a get returned), `fail CLIENT N` (a call failed).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use derecho::driver::TransportKind;
use derecho::protocol::{NodeId, ShardIndex, ShardRef, SubgroupId};
use derecho::rpc::Service;
use derecho::runtime::time;
use derecho::sim::SimRng;
use derecho_examples::kv::{KvStore, KvStoreClient};

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
/// The keys every client works on.
pub const KEYS: [&str; 3] = ["apple", "pear", "plum"];
const CLIENTS: u32 = 2;

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The history file: each line one `write` (the file is opened for appending).
struct History(RefCell<File>);

impl History {
    fn line(&self, line: String) {
        self.0.borrow_mut().write_all(format!("{line}\n").as_bytes()).expect("write the history");
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

struct Phase {
    number: u32,
    ops: u32,
    pace: Duration,
    stall_after: Option<u32>,
}

async fn client(id: u32, phase: Rc<Phase>, kv: KvStoreClient, seed: u64, history: Rc<History>) {
    let mut rng = SimRng::new(
        (seed ^ u64::from(id) << 32 ^ u64::from(phase.number) << 48).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
    );
    let (ops, pace, stall_after) = (phase.ops, phase.pace, phase.stall_after);
    let phase = phase.number;
    for i in 0..ops {
        let stall = stall_after == Some(i);
        if stall {
            println!("stalling");
        }
        let n = phase * 1000 + i;
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        if rng.below(2) == 0 {
            let value = format!("c{id}-{n}");
            history.line(format!("inv {id} {n} {key} put {value} {}", now_ns()));
            match kv.put(key, value.as_bytes()).await {
                Ok(_) => history.line(format!("ok {id} {n} {}", now_ns())),
                Err(e) => {
                    history.line(format!("fail {id} {n}"));
                    eprintln!("client {id}: put failed: {e}");
                    return;
                }
            }
        } else {
            let to = NodeId(rng.below(3) as u32);
            history.line(format!("inv {id} {n} {key} get {}", now_ns()));
            match kv.get(to, key).await {
                Ok(got) => {
                    let t = now_ns();
                    let value = got.map_or("-".to_string(), |(_, v)| String::from_utf8(v).expect("utf-8"));
                    history.line(format!("got {id} {n} {t} {value}"));
                }
                // Its member is gone (or this one stopped): the read had no effect.
                Err(_) => history.line(format!("fail {id} {n}")),
            }
        }
        if stall {
            std::future::pending::<()>().await;
        }
        if !pace.is_zero() {
            time::sleep(pace).await;
        }
    }
}

/// Puts unique values until the process is killed; each put's version, once persisted at every
/// member, is written to the history as `durable KEY VALUE VERSION`.
async fn writer(me: u32, w: u32, service: Service, history: Rc<History>) {
    let handle = service.handle::<KvStore>(SHARD);
    let kv = KvStoreClient::new(handle.clone());
    for n in 0u64.. {
        let key = KEYS[(n % KEYS.len() as u64) as usize];
        let value = format!("m{me}w{w}-{n}");
        let version = match kv.put(key, value.as_bytes()).await {
            Ok(r) => r.version,
            Err(e) => {
                eprintln!("writer {w}: put failed: {e}");
                return;
            }
        };
        let (handle, history) = (handle.clone(), history.clone());
        drop(derecho::spawn(async move {
            if handle.wait_persisted(version, Duration::from_secs(30)).await.is_ok() {
                history.line(format!("durable {key} {value} {}", version.as_u64()));
            }
        }));
    }
}

fn main() {
    // The library's logs on standard error, filtered by `RUST_LOG` (warnings and errors if
    // unset: the tests read this process's output).
    derecho::logging::init_default("warn");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |n: &str| -> u64 { arg(&args, n).unwrap_or_else(|| panic!("{n} is required")).parse().expect("a number") };
    let me = num("--me") as u32;
    let seed = num("--seed");
    let ops = num("--ops") as u32;
    let history_path = arg(&args, "--history").expect("--history is required").to_string();
    let contact: Option<SocketAddr> = arg(&args, "--contact").map(|c| c.parse().expect("an address"));
    let shm_dir = arg(&args, "--shm-dir").map(str::to_string);
    let persist = arg(&args, "--persist").map(str::to_string);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&history_path).expect("the history file");
    let history = Rc::new(History(RefCell::new(file)));

    // Commands from the test.
    let rx = derecho_tests::child::stdin_lines();

    derecho::Builder::new().build().expect("executor").block_on(async move {
        let mut builder = derecho_tests::child::loopback_member(me, "kv-linearizable");
        if let Some(d) = shm_dir {
            builder = builder.transport(TransportKind::Shm).shm_dir(d);
        }
        let service = Service::new();
        service.host(SubgroupId(0), KvStore::default);
        if let Some(dir) = &persist {
            service.persist_to(dir).expect("the log directory");
        }
        let group = service.start_or_join(builder, contact).await.expect("start, join or restart");
        let view = group.view();
        let members: Vec<String> = view.members.iter().map(|m| m.0.to_string()).collect();
        println!("started in view {} members {}", view.id.0, members.join(","));
        group.wait_view(Duration::from_secs(30), |v| v.members.len() == 3).await.expect("a view of three");
        println!("ready");
        let kv = KvStoreClient::new(service.handle::<KvStore>(SHARD).stable_reads());
        loop {
            let command = loop {
                match rx.try_recv() {
                    Ok(c) => break Some(c),
                    Err(mpsc::TryRecvError::Empty) => time::sleep(Duration::from_millis(1)).await,
                    Err(mpsc::TryRecvError::Disconnected) => break None,
                }
            };
            let Some(command) = command else { break };
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.as_slice() {
                ["phase", p, rest @ ..] => {
                    let phase = Rc::new(Phase {
                        number: p.parse().expect("a phase number"),
                        ops,
                        pace: Duration::from_micros(rest.first().map_or(0, |v| v.parse().expect("µs"))),
                        stall_after: rest.get(1).map(|v| v.parse().expect("an operation number")),
                    });
                    let clients =
                        (0..CLIENTS).map(|c| client(me * 10 + c, phase.clone(), kv.clone(), seed, history.clone()));
                    futures::future::join_all(clients).await;
                    println!("phase {} done", phase.number);
                }
                ["load"] => {
                    for w in 0..4 {
                        drop(derecho::spawn(writer(me, w, service.clone(), history.clone())));
                    }
                }
                ["verify", files @ ..] => {
                    let mut verified = 0;
                    for f in files {
                        let text = std::fs::read_to_string(f).expect("a history file");
                        for line in text.lines() {
                            let words: Vec<&str> = line.split(' ').collect();
                            let ["durable", key, value, version] = words.as_slice() else { continue };
                            let version: u64 = version.parse().expect("a version");
                            let found = service.read::<KvStore, _>(SHARD, |s| s.get_at(key, version)).flatten();
                            if found.as_deref() != Some(value.as_bytes()) {
                                println!("lost {key} {value} {version}: found {found:?}");
                                std::process::exit(1);
                            }
                            verified += 1;
                        }
                    }
                    println!("verified {verified}");
                }
                ["digest"] => {
                    let latest = service.read::<KvStore, _>(SHARD, |s| KEYS.map(|k| s.get(k))).expect("a replica");
                    let words: Vec<String> = KEYS
                        .iter()
                        .zip(latest)
                        .map(|(k, l)| match l {
                            Some((v, value)) => format!("{k}@{v}={}", String::from_utf8_lossy(&value)),
                            None => format!("{k}@-"),
                        })
                        .collect();
                    println!("digest {}", words.join(" "));
                }
                ["exit"] => break,
                other => panic!("unknown command {other:?}"),
            }
        }
        group.close().await;
    });
}
