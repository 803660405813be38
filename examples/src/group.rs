//! The pieces of the `group` demo: a member of a group with membership, its command line, the
//! application it replicates, and the lines the launcher reads.
//!
//! The replicated application is a running digest of every message delivered in the group's one
//! ordered shard: (sender, number) folded in delivery order, with a count and the set of members
//! that said they are done. Its state (for members that join) is exactly that: a count, a digest
//! and the done set. A member that joins late starts from the state and folds what follows, so
//! it ends with the digest of the whole history if and only if state transfer and the view change
//! lost, duplicated and reordered nothing. The book includes parts of this file.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho::driver::{
    Application, ConfigError, GroupMemberConfig, GroupSendError, JoinError, State, ViewChange, WaitError,
};
use derecho::driver::{Group, GroupError};
use derecho::hash::Fnv64;
use derecho::protocol::{Delivered, NodeId, ShardRef};
use derecho::runtime::{RuntimeError, time};

/// The demo's configuration file, next to this crate's `Cargo.toml`.
pub const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/group.toml");
/// Bytes of a message's header: sender (`u32`), kind (`u32`: 0 a message, 1 "done"), number.
pub const HEADER_LEN: usize = 16;
/// How long a member waits for the group to have enough members, and for the others' "done".
pub const WAIT: Duration = Duration::from_secs(120);
/// How often a member prints its progress.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the whole scenario.
    Launch(Options),
    /// Be one member (the launcher passes `--member`).
    Member(Options),
}

/// Options shared by the launcher and the members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// Messages each member sends.
    pub count: u64,
    /// Messages per second each member sends.
    pub rate: u64,
    /// Bytes per message.
    pub size: usize,
    /// The delivery logs' directory.
    pub log_dir: Option<PathBuf>,
    /// `--set` overrides, in order.
    pub sets: Vec<String>,
    /// Leave placement to the scheduler.
    pub unpinned: bool,
    /// A member waits for this many members before it sends.
    pub wait_members: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: DEFAULT_CONFIG.into(),
            count: 20_000,
            rate: 2_000,
            size: 100,
            log_dir: None,
            sets: Vec::new(),
            unpinned: false,
            wait_members: 3,
        }
    }
}

pub use crate::multicast::UsageError;

/// Starts a group of three member processes on this machine, each pinned to a core, sending
/// ordered messages at R per second each. Once a quarter of the messages are delivered it kills
/// one member (kill -9), shows the survivors' new view, and starts a fourth member that joins
/// through state transfer. At the end it checks the members' delivery logs: the survivors
/// delivered identical sequences, the killed member a prefix of them, the joiner their suffix,
/// and every surviving member the same digest of the whole history.
#[derive(Debug, clap::Parser)]
#[command(name = "group-demo", version)]
struct Cli {
    /// The member settings (keys: `derecho::driver::GroupMemberConfig`).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Messages each member sends.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    count: u64,
    /// Messages per second each member sends.
    #[arg(long, value_name = "R", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    rate: u64,
    /// Bytes per message, at least 16.
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(HEADER_LEN as u64..=1 << 32))]
    size: u64,
    /// Where members write their delivery logs (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Overrides a key of the file, for every member (e.g. membership.suspect_after_ms=50).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Leave the members' placement to the scheduler.
    #[arg(long)]
    unpinned: bool,
    /// Be one member (the launcher passes it).
    #[arg(long, hide = true)]
    member: bool,
    /// A member waits for this many members before it sends (the launcher passes it).
    #[arg(long, hide = true, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    wait_members: u64,
}

/// Parses the command line (without the program name).
///
/// # Errors
///
/// [`UsageError`] for an unknown option, a missing value or a value out of range, and for
/// `--help` (its kind is `DisplayHelp`: `e.exit()` prints the help and exits 0).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("group-demo".to_string()).chain(args))?;
    let o = Options {
        config: cli.config,
        count: cli.count,
        rate: cli.rate,
        size: cli.size as usize,
        log_dir: cli.log_dir,
        sets: cli.sets,
        unpinned: cli.unpinned,
        wait_members: cli.wait_members as usize,
    };
    Ok(if cli.member { Command::Member(o) } else { Command::Launch(o) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_command_line_is_parsed_and_member_arguments_round_trip() {
        let Ok(Command::Launch(o)) = parse_args(args("")) else { panic!("launch") };
        assert_eq!(o, Options::default());
        let o = Options { count: 9, rate: 5, log_dir: Some("/tmp/x".into()), sets: vec!["a=b".into()], ..o };
        let Ok(Command::Member(m)) = parse_args(o.member_args(&["me=2".to_string()])) else { panic!("member") };
        assert_eq!(m, Options { sets: vec!["a=b".into(), "me=2".into()], ..o });
        for a in ["--count zero", "--size 8", "--rate 0"] {
            let e = parse_args(args(a)).expect_err(a);
            assert!(e.to_string().contains(a.split(' ').next().unwrap()), "{a}: {e}");
        }
        assert_eq!(parse_args(args("--help")).expect_err("help").kind(), clap::error::ErrorKind::DisplayHelp);
    }
}

impl Options {
    /// The arguments that make a copy of this program a member, with `extra` overrides.
    pub fn member_args(&self, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "--member".to_string(),
            "--config".into(),
            self.config.display().to_string(),
            "--count".into(),
            self.count.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--wait-members".into(),
            self.wait_members.to_string(),
        ];
        if let Some(d) = &self.log_dir {
            args.extend(["--log-dir".into(), d.display().to_string()]);
        }
        for s in self.sets.iter().chain(extra) {
            args.extend(["--set".to_string(), s.clone()]);
        }
        args
    }
}

/// What can go wrong in a member.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The executor could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The group could not start.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// Joining failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// A send failed.
    #[error(transparent)]
    Send(#[from] GroupSendError),
    /// Waiting for a view failed.
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// The log could not be written.
    #[error("delivery log: {0}")]
    Log(#[from] std::io::Error),
    /// The size does not fit the configuration.
    #[error("--size {size} is larger than limits.payload_len_max {max}")]
    TooLarge {
        /// The size asked for.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Something arrived that the sender did not write, or not in its order.
    #[error("corrupt delivery: {0}")]
    Corrupt(String),
    /// The others did not finish in time.
    #[error("not everyone was done within {0:?}")]
    Timeout(Duration),
}

// ANCHOR: app
/// The replicated application: a digest of everything delivered, and who is done.
#[derive(Debug)]
pub struct History {
    /// Messages delivered (in this member's history, restored state included).
    pub delivered: u64,
    /// FNV-1a over (sender, number, kind) of every delivery, in delivery order.
    pub digest: u64,
    /// Members that delivered their "done".
    pub done: BTreeSet<u32>,
    /// The next number expected from each sender (FIFO per sender).
    next: std::collections::BTreeMap<u32, u64>,
    /// The first thing wrong.
    pub error: Option<String>,
    log: Option<BufWriter<File>>,
    me: NodeId,
}

/// The application object the group drives: a handle on the history.
#[derive(Clone, Debug)]
pub struct Replica(pub Rc<RefCell<History>>);

impl Application for Replica {
    fn deliver(&mut self, d: Delivered<'_>) {
        let mut h = self.0.borrow_mut();
        let view = d.version.map_or(0, |v| v.view().0);
        match parse(d.payload, d.sender) {
            Ok((n, done)) => {
                let next = h.next.entry(d.sender.0).or_insert(0);
                if done {
                    h.done.insert(d.sender.0);
                } else if n != *next {
                    let e = format!("{}'s message {n} delivered, {} expected", d.sender, *next);
                    h.error.get_or_insert(e);
                } else {
                    *next += 1;
                }
                h.delivered += 1;
                h.digest = Fnv64::from_state(h.digest)
                    .write(&d.sender.0.to_le_bytes())
                    .write(&n.to_le_bytes())
                    .write(&[u8::from(done)])
                    .finish();
                if let Some(log) = &mut h.log {
                    let kind = if done { "done" } else { "msg" };
                    let _ = writeln!(log, "v{view} {} {kind} {n}", d.sender.0);
                }
            }
            Err(e) => {
                h.error.get_or_insert(e);
            }
        }
    }

    fn snapshot(&mut self, _shard: ShardRef) -> State {
        let h = self.0.borrow();
        let mut out = Vec::new();
        out.extend(h.delivered.to_le_bytes());
        out.extend(h.digest.to_le_bytes());
        out.extend((h.next.len() as u32).to_le_bytes());
        for (s, n) in &h.next {
            out.extend(s.to_le_bytes());
            out.extend(n.to_le_bytes());
        }
        out.extend((h.done.len() as u32).to_le_bytes());
        for s in &h.done {
            out.extend(s.to_le_bytes());
        }
        State::Ready(out)
    }

    fn restore(&mut self, _shard: ShardRef, state: &[u8]) -> Result<(), derecho::driver::AppError> {
        let mut r = state;
        let mut take = |n: usize| -> Result<&[u8], derecho::driver::AppError> {
            if r.len() < n {
                return Err("a state shorter than its fields".into());
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let delivered = u64_of(take(8)?);
        let digest = u64_of(take(8)?);
        let mut next = std::collections::BTreeMap::new();
        for _ in 0..u32_of(take(4)?) {
            let s = u32_of(take(4)?);
            next.insert(s, u64_of(take(8)?));
        }
        let mut done = BTreeSet::new();
        for _ in 0..u32_of(take(4)?) {
            done.insert(u32_of(take(4)?));
        }
        if !r.is_empty() {
            return Err("bytes after the state".into());
        }
        let mut h = self.0.borrow_mut();
        (h.delivered, h.digest, h.next, h.done) = (delivered, digest, next, done);
        println!("member {}: state received: {delivered} messages delivered before it joined", h.me.0);
        Ok(())
    }

    fn view_installed(&mut self, c: &ViewChange) {
        let ids = |v: &[NodeId]| v.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",");
        let me = self.0.borrow().me;
        println!(
            "member {}: view {} members [{}] joined [{}] departed [{}]{}",
            me.0,
            c.view.id.0,
            ids(&c.view.members),
            ids(&c.joined),
            ids(&c.departed),
            c.inadequate.as_ref().map_or(String::new(), |w| format!(" (inadequate: {w})"))
        );
    }
}
// ANCHOR_END: app

/// Writes message `n` (or the "done" marker) of `sender`.
pub fn fill(buf: &mut [u8], sender: NodeId, n: u64, done: bool) {
    buf[..4].copy_from_slice(&sender.0.to_le_bytes());
    buf[4..8].copy_from_slice(&u32::from(done).to_le_bytes());
    buf[8..16].copy_from_slice(&n.to_le_bytes());
    buf[HEADER_LEN..].fill((n % 251) as u8);
}

fn parse(b: &[u8], sender: NodeId) -> Result<(u64, bool), String> {
    if b.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than the header", b.len()));
    }
    let from = u32::from_le_bytes(b[..4].try_into().expect("4"));
    let kind = u32::from_le_bytes(b[4..8].try_into().expect("4"));
    let n = u64::from_le_bytes(b[8..16].try_into().expect("8"));
    if from != sender.0 || kind > 1 || b[HEADER_LEN..].iter().any(|&x| x != (n % 251) as u8) {
        return Err(format!("a message of {sender} that it did not write"));
    }
    Ok((n, kind == 1))
}

/// A member's summary line, which the launcher reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The member.
    pub me: u32,
    /// Messages delivered in its history.
    pub delivered: u64,
    /// The history's digest.
    pub digest: u64,
    /// Its last view.
    pub view: u32,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary member={} delivered={} digest={:016x} view={}",
            self.me, self.delivered, self.digest, self.view
        )
    }
}

impl Summary {
    /// Parses a line printed by [`Summary`]'s `Display`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("summary ")?;
        let (mut me, mut delivered, mut digest, mut view) = (None, None, None, None);
        for kv in rest.split_whitespace() {
            match kv.split_once('=')? {
                ("member", v) => me = v.parse().ok(),
                ("delivered", v) => delivered = v.parse().ok(),
                ("digest", v) => digest = u64::from_str_radix(v, 16).ok(),
                ("view", v) => view = v.parse().ok(),
                _ => return None,
            }
        }
        Some(Self { me: me?, delivered: delivered?, digest: digest?, view: view? })
    }
}

/// The delivery log of member `id` in `dir`.
pub fn log_path(dir: &std::path::Path, id: u32) -> PathBuf {
    dir.join(format!("member-{id}.log"))
}

/// Runs one member to the end: start or join, wait for enough members, send, wait until every
/// member of the view is done, settle, close.
///
/// # Errors
///
/// [`DemoError`].
pub fn run_member(options: &Options) -> Result<Summary, DemoError> {
    let config = GroupMemberConfig::load(&options.config, std::env::vars(), &options.sets)?;
    if options.size > config.limits.payload_len_max as usize {
        return Err(DemoError::TooLarge { size: options.size, max: config.limits.payload_len_max as usize });
    }
    let executor = config.executor().build()?;
    executor.block_on(member(&config, options))
}

// ANCHOR: member
async fn member(config: &GroupMemberConfig, o: &Options) -> Result<Summary, DemoError> {
    let me = config.me;
    let log = match &o.log_dir {
        Some(d) => Some(BufWriter::new(File::create(log_path(d, me.0))?)),
        None => None,
    };
    let history = Rc::new(RefCell::new(History {
        delivered: 0,
        digest: Fnv64::new().finish(),
        done: BTreeSet::new(),
        next: Default::default(),
        error: None,
        log,
        me,
    }));
    let replica = Replica(history.clone());
    let group = match config.contact {
        None => config.builder().start(replica).await?,
        Some(contact) => config.builder().join(contact, replica).await?,
    };
    println!("member {}: in the group, listening on {}", me.0, group.local_addr());
    let shard = config.shard_refs()[0];
    group.wait_view(WAIT, |v| v.members.len() >= o.wait_members && !v.shards.is_empty()).await?;

    // Send at the configured rate; a view change in the middle only delays a send.
    let started = Instant::now();
    let mut reported = Instant::now();
    for n in 0..o.count {
        let due = started + Duration::from_secs_f64(n as f64 / o.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            time::sleep(wait).await;
        }
        group.send(shard, o.size, |b| fill(b, me, n, false)).await?;
        if reported.elapsed() >= REPORT_EVERY {
            reported = Instant::now();
            report(&group, &history, n + 1);
        }
    }
    group.send(shard, o.size, |b| fill(b, me, o.count, true)).await?;

    // Done when every member of the current view said so (a failed member leaves the view).
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = history.borrow().error.clone() {
            return Err(DemoError::Corrupt(e));
        }
        let members = group.members();
        if members.iter().all(|m| history.borrow().done.contains(&m.0)) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout(WAIT));
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = Instant::now();
            report(&group, &history, o.count);
        }
        time::sleep(Duration::from_millis(5)).await;
    }
    // Everyone delivered up to here before this member goes, so its leaving is no failure.
    let _ = group.settle(shard, Duration::from_secs(10)).await;
    if let Some(log) = &mut history.borrow_mut().log {
        log.flush()?;
    }
    let summary = {
        let h = history.borrow();
        Summary { me: me.0, delivered: h.delivered, digest: h.digest, view: group.view().id.0 }
    };
    group.close().await;
    Ok(summary)
}
// ANCHOR_END: member

fn report(group: &Group, history: &RefCell<History>, sent: u64) {
    let mut h = history.borrow_mut();
    println!("member {}: sent {sent}, delivered {} (view {})", h.me.0, h.delivered, group.view().id.0);
    // A killed member's log keeps what it delivered up to its last report.
    if let Some(log) = &mut h.log {
        let _ = log.flush();
    }
}
