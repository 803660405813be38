//! The pieces of the `multicast` demo: its command line, what a member does, and how the messages
//! are written and checked.
//!
//! Every member of the group (one process each, started by the binary `src/bin/multicast-demo.rs`)
//! sends `count` messages into the group's one ordered shard and delivers everybody's messages in
//! the one order they all agree on. Each member folds the order it delivered in into a digest;
//! the launcher checks that the digests are equal, which is what ordered multicast promises. The
//! book includes parts of this file.

use derecho::hash::Fnv64;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use derecho::driver::{ConfigError, GroupConfig, GroupError, GroupEvent, GroupSendError, SettleError, StaticGroup};
use derecho::protocol::{Delivered, NodeId};
use derecho::runtime::{RuntimeError, spawn, time};
use futures::future::{Either, select};

/// The demo's configuration file, next to this crate's `Cargo.toml`.
pub const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/multicast.toml");
/// The smallest `--size`: a message starts with its sender and its number.
pub const SIZE_MIN: usize = HEADER_LEN;
/// The largest `--count`.
pub const COUNT_MAX: u64 = 1 << 32;
/// How long a member waits for the last of its messages before it gives up.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a member waits, once it has delivered everything, for the others to do the same.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a member prints its delivery rate.
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Bytes of the header every message starts with: the sender's id (`u32`, little-endian), four
/// zero bytes, and the message's number at that sender (`u64`).
pub const HEADER_LEN: usize = 16;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start every member and check their orders.
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
    /// Bytes per message.
    pub size: usize,
    /// `--set` overrides, in order.
    pub sets: Vec<String>,
    /// Leave placement to the scheduler.
    pub unpinned: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { config: DEFAULT_CONFIG.into(), count: 2_000_000, size: 100, sets: Vec::new(), unpinned: false }
    }
}

impl Options {
    /// Loads the configuration with the environment's and the command line's overrides.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the key at fault.
    pub fn load(&self) -> Result<GroupConfig, ConfigError> {
        GroupConfig::load(&self.config, std::env::vars(), &self.sets)
    }

    /// As [`Options::load`], and checks that the message size fits the configuration.
    ///
    /// # Errors
    ///
    /// [`DemoError::Config`] or [`DemoError::TooLarge`].
    pub fn load_checked(&self) -> Result<GroupConfig, DemoError> {
        let config = self.load()?;
        let max = config.limits.payload_len_max as usize;
        if self.size > max {
            return Err(DemoError::TooLarge { size: self.size, max });
        }
        Ok(config)
    }

    /// The arguments that make a copy of this program member `me`, pinned to `core`.
    pub fn member_args(&self, me: NodeId, core: Option<usize>, shm_namespace: &str) -> Vec<String> {
        let mut args = vec![
            "--member".to_string(),
            "--config".to_string(),
            self.config.display().to_string(),
            "--count".to_string(),
            self.count.to_string(),
            "--size".to_string(),
            self.size.to_string(),
        ];
        for s in &self.sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        args.extend(["--set".to_string(), format!("me={}", me.0)]);
        args.extend(["--set".to_string(), format!("shm_namespace={shm_namespace:?}")]);
        if let Some(c) = core {
            args.extend(["--set".to_string(), format!("core={c}")]);
        }
        args
    }
}

/// A command-line error (clap's: it prints itself with usage, `--help` and `--version`
/// included, and exits 2 for a usage error, 0 for help).
pub type UsageError = clap::Error;

/// Starts one process per member of the group in FILE, each pinned to a core. Every member sends
/// N messages into one ordered shard and prints what it delivers and how fast; at the end the
/// launcher checks that all members delivered the same messages in the same order.
#[derive(Debug, clap::Parser)]
#[command(name = "multicast-demo", version)]
struct Cli {
    /// The group's configuration file (keys: `derecho::driver::GroupConfig`).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Messages each member sends.
    #[arg(long, value_name = "N", default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=COUNT_MAX))]
    count: u64,
    /// Bytes per message, from 16 to the configured payload_len_max.
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(SIZE_MIN as u64..))]
    size: u64,
    /// Overrides a key of the file, for every member (e.g. transport=shm).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Leave the members' placement to the scheduler.
    #[arg(long)]
    unpinned: bool,
    /// Be one member (the launcher passes it).
    #[arg(long, hide = true)]
    member: bool,
}

/// Parses the command line (without the program name).
///
/// # Errors
///
/// [`UsageError`] for an unknown option, a missing value or a value out of range, and for
/// `--help` (its kind is `DisplayHelp`: `e.exit()` prints the help and exits 0).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("multicast-demo".to_string()).chain(args))?;
    let o = Options {
        config: cli.config,
        count: cli.count,
        size: cli.size as usize,
        sets: cli.sets,
        unpinned: cli.unpinned,
    };
    Ok(if cli.member { Command::Member(o) } else { Command::Launch(o) })
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
    /// A send failed.
    #[error(transparent)]
    Send(#[from] GroupSendError),
    /// The others did not finish delivering.
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// The size does not fit the configuration.
    #[error("--size {size} is larger than limits.payload_len_max {max}")]
    TooLarge {
        /// The size asked for.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// This member is not in the first shard, so it has nothing to do.
    #[error("member {0} is not in the first shard")]
    NotInShard(NodeId),
    /// A delivered message was not what its sender wrote.
    #[error("corrupt message: {0}")]
    Corrupt(String),
    /// Another member failed; a static group cannot go on without it.
    #[error("{0} failed: {1}")]
    PeerFailed(NodeId, String),
    /// Not everything arrived in time.
    #[error("only {delivered} of {expected} messages delivered within {within:?}")]
    Incomplete {
        /// Delivered so far.
        delivered: u64,
        /// Expected.
        expected: u64,
        /// How long it waited.
        within: Duration,
    },
}

// ANCHOR: message
/// Writes message number `n` of `sender` into `buf`: the header, then bytes that depend on both,
/// so that a message delivered with another's bytes is caught.
pub fn fill_message(buf: &mut [u8], sender: NodeId, n: u64) {
    buf[..4].copy_from_slice(&sender.0.to_le_bytes());
    buf[4..8].fill(0);
    buf[8..16].copy_from_slice(&n.to_le_bytes());
    let tag = pattern(sender, n);
    buf[HEADER_LEN..].fill(tag);
}

/// Checks a delivered message against what its sender would have written; returns its number.
///
/// # Errors
///
/// A description of the first difference.
pub fn check_message(bytes: &[u8], sender: NodeId) -> Result<u64, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len()));
    }
    let from = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if from != sender.0 {
        return Err(format!("delivered as {sender}'s but written by node {from}"));
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let tag = pattern(sender, n);
    if let Some(at) = bytes[HEADER_LEN..].iter().position(|&b| b != tag) {
        return Err(format!("message {n} of {sender}: byte {} differs", HEADER_LEN + at));
    }
    Ok(n)
}

fn pattern(sender: NodeId, n: u64) -> u8 {
    (u64::from(sender.0).wrapping_mul(31).wrapping_add(n) % 251) as u8
}
// ANCHOR_END: message

/// What a member saw: every delivery folded, in order, into a digest.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Messages delivered.
    pub delivered: u64,
    /// Bytes of messages delivered.
    pub bytes: u64,
    /// FNV-1a over (sender, number) of every delivery, in delivery order.
    pub digest: u64,
    /// The next number expected from each sender (FIFO order per sender), by sender rank.
    next: Vec<u64>,
    /// The first thing that was wrong.
    pub error: Option<String>,
}

impl Tally {
    fn new(senders: usize) -> Self {
        Self { digest: Fnv64::new().finish(), next: vec![0; senders], ..Self::default() }
    }

    // ANCHOR: tally
    /// Records one delivery: checks its bytes and that it is the sender's next message, and
    /// folds it into the digest.
    fn record(&mut self, d: &Delivered<'_>, sender_rank: usize) {
        match check_message(d.payload, d.sender) {
            Ok(n) if n == self.next[sender_rank] => self.next[sender_rank] += 1,
            Ok(n) => self.fail(format!("{}'s message {n} delivered, {} expected", d.sender, self.next[sender_rank])),
            Err(e) => self.fail(e),
        }
        self.delivered += 1;
        self.bytes += d.payload.len() as u64;
        self.digest =
            Fnv64::from_state(self.digest).write(&d.sender.0.to_le_bytes()).write(&d.index.to_le_bytes()).finish();
    }
    // ANCHOR_END: tally

    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
    }
}

/// A member's summary line, which the launcher reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The member.
    pub me: NodeId,
    /// Messages delivered.
    pub delivered: u64,
    /// The order's digest.
    pub digest: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "summary member={} delivered={} digest={:016x}", self.me.0, self.delivered, self.digest)
    }
}

impl Summary {
    /// Parses a line printed by [`Summary`]'s `Display`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("summary ")?;
        let mut me = None;
        let mut delivered = None;
        let mut digest = None;
        for kv in rest.split_whitespace() {
            match kv.split_once('=')? {
                ("member", v) => me = v.parse().ok().map(NodeId),
                ("delivered", v) => delivered = v.parse().ok(),
                ("digest", v) => digest = u64::from_str_radix(v, 16).ok(),
                _ => return None,
            }
        }
        Some(Self { me: me?, delivered: delivered?, digest: digest? })
    }
}

/// Runs one member to the end: start, send, deliver everything, wait for the others, close.
///
/// # Errors
///
/// [`DemoError`].
pub fn run_member(options: &Options) -> Result<Summary, DemoError> {
    let config = options.load_checked()?;
    let executor = config.executor().build()?;
    executor.block_on(member(&config, options.count, options.size))
}

/// Progress shared between the delivery callback and the member's task.
struct Progress {
    tally: RefCell<Tally>,
    expected: u64,
    /// The member's task, waiting for the last delivery.
    done: RefCell<Option<Waker>>,
    finished: Cell<bool>,
}

// ANCHOR: member
async fn member(config: &GroupConfig, count: u64, size: usize) -> Result<Summary, DemoError> {
    let me = config.me;
    let shard = config.view.shards.first().expect("a validated view has a shard");
    if !shard.members.contains(&me) {
        return Err(DemoError::NotInShard(me));
    }
    let senders = shard.senders.clone();
    let progress = Rc::new(Progress {
        tally: RefCell::new(Tally::new(senders.len())),
        expected: count * senders.len() as u64,
        done: RefCell::new(None),
        finished: Cell::new(false),
    });

    // The delivery callback borrows each message in place, in the shard's total order.
    let on_deliver = {
        let progress = progress.clone();
        let senders = senders.clone();
        move |d: Delivered<'_>| {
            let rank = senders.iter().position(|&s| s == d.sender).expect("the protocol checks senders");
            let mut tally = progress.tally.borrow_mut();
            if tally.delivered < 3 {
                println!(
                    "member {}: delivered {}'s message {} ({} bytes) at position {} of view {}",
                    me.0,
                    d.sender,
                    d.index,
                    d.payload.len(),
                    d.version.map_or(0, |v| v.seq()),
                    d.version.map_or(0, |v| v.view().0),
                );
            }
            tally.record(&d, rank);
            if tally.delivered == progress.expected {
                progress.finished.set(true);
                if let Some(w) = progress.done.borrow_mut().take() {
                    w.wake();
                }
            }
        }
    };
    let group = StaticGroup::start_from_config(config, on_deliver).await?;
    println!("member {}: group of {} started over {}", me.0, config.view.members.len(), config.transport);
    let reporter = spawn(report_rate(me, progress.clone()));

    let started = Instant::now();
    let work = async {
        if senders.contains(&me) {
            for n in 0..count {
                // The message is written in place into this member's row of the shared table.
                group.send(shard.id, size, |buf| fill_message(buf, me, n)).await?;
            }
        }
        poll_fn(|cx| {
            if progress.finished.get() {
                return Poll::Ready(());
            }
            *progress.done.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        Ok::<(), DemoError>(())
    };
    // A static group cannot go on without a member: a peer's failure ends the run.
    let failure = async {
        loop {
            if let GroupEvent::PeerFailed { peer, reason } = group.next_event().await {
                return DemoError::PeerFailed(peer, reason.to_string());
            }
        }
    };
    let outcome = match select(pin!(time::timeout(DELIVERY_TIMEOUT, work)), pin!(failure)).await {
        Either::Left((Ok(r), _)) => r,
        Either::Left((Err(_), _)) => {
            let (delivered, expected) = (progress.tally.borrow().delivered, progress.expected);
            Err(DemoError::Incomplete { delivered, expected, within: DELIVERY_TIMEOUT })
        }
        Either::Right((e, _)) => Err(e),
    };
    let elapsed = started.elapsed();
    reporter.abort();
    let tally = progress.tally.borrow().clone();
    if let Err(e) = outcome {
        group.close().await;
        return Err(e);
    }
    if let Some(e) = tally.error {
        group.close().await;
        return Err(DemoError::Corrupt(e));
    }
    // Leave only once everyone has delivered everything, so nobody sees this member vanish early.
    let settled = group.settle(shard.id, SETTLE_TIMEOUT).await;
    group.close().await;
    settled?;
    print_rate(me, "delivered all", tally.delivered, tally.bytes, elapsed);
    Ok(Summary { me, delivered: tally.delivered, digest: tally.digest })
}
// ANCHOR_END: member

async fn report_rate(me: NodeId, progress: Rc<Progress>) {
    let start = Instant::now();
    let mut last = (start, 0u64, 0u64);
    loop {
        time::sleep(REPORT_EVERY).await;
        let now = Instant::now();
        let (delivered, bytes) = {
            let t = progress.tally.borrow();
            (t.delivered, t.bytes)
        };
        print_rate(me, "delivering", delivered - last.1, bytes - last.2, now - last.0);
        last = (now, delivered, bytes);
    }
}

fn print_rate(me: NodeId, what: &str, messages: u64, bytes: u64, over: Duration) {
    let secs = over.as_secs_f64().max(1e-9);
    println!(
        "member {}: {what}: {messages} messages in {:.2} s, {:.3} M msg/s, {:.3} GB/s",
        me.0,
        secs,
        messages as f64 / secs / 1e6,
        bytes as f64 / secs / 1e9
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn messages_round_trip_and_corruption_is_caught() {
        let mut buf = vec![0u8; 100];
        fill_message(&mut buf, NodeId(2), 77);
        assert_eq!(check_message(&buf, NodeId(2)), Ok(77));
        assert!(check_message(&buf, NodeId(1)).unwrap_err().contains("written by node 2"));
        buf[60] ^= 1;
        assert!(check_message(&buf, NodeId(2)).unwrap_err().contains("byte 60"));
        assert!(check_message(&buf[..8], NodeId(2)).unwrap_err().contains("shorter"));
    }

    #[test]
    fn the_command_line_is_parsed_and_checked() {
        use clap::error::ErrorKind;
        let kind = |a: &str| parse_args(args(a)).expect_err(a).kind();
        assert_eq!(kind("--help"), ErrorKind::DisplayHelp);
        let Ok(Command::Member(o)) = parse_args(args("--member --count 5 --size 64 --set a=b")) else {
            panic!("member")
        };
        assert_eq!((o.count, o.size, o.sets), (5, 64, vec!["a=b".to_string()]));
        let Ok(Command::Launch(o)) = parse_args(args("")) else { panic!("launch") };
        assert_eq!(o, Options::default());
        for (a, option) in [("--size 8", "--size"), ("--count 0", "--count")] {
            let e = parse_args(args(a)).expect_err(a);
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{a}");
            assert!(e.to_string().contains(option), "{a}: {e}");
        }
        assert_eq!(kind("--count"), ErrorKind::InvalidValue);
        assert_eq!(kind("--bogus"), ErrorKind::UnknownArgument);
    }

    #[test]
    fn summaries_parse_back() {
        let s = Summary { me: NodeId(3), delivered: 1200, digest: 0xdead_beef };
        assert_eq!(Summary::parse(&s.to_string()), Some(s));
        assert_eq!(Summary::parse("member 3: delivering"), None);
    }

    #[test]
    fn member_arguments_reach_the_member_parser() {
        let o = Options { count: 9, ..Options::default() };
        let a = o.member_args(NodeId(1), Some(0), "ns-1");
        let Ok(Command::Member(m)) = parse_args(a) else { panic!("member") };
        assert_eq!(m.count, 9);
        assert!(m.sets.contains(&"me=1".to_string()) && m.sets.contains(&"core=0".to_string()));
    }
}
