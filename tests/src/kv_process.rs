//! A `kv_member` child process (`src/bin/kv_member.rs`): started with its arguments, told
//! commands on its standard input, its standard output read line by line, killed or finished.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a member has to print an expected line or to exit.
pub const WAIT: Duration = Duration::from_secs(20);

/// One `kv_member` process: its standard input, and its standard output line by line.
#[derive(Debug)]
pub struct Member {
    me: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Member {
    /// Starts `program` (the `kv_member` binary) as member `me` with `args` (besides `--me`).
    ///
    /// # Panics
    ///
    /// If the program cannot start.
    pub fn spawn(program: &str, me: u32, args: &[OsString]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(["--me", &me.to_string()]).args(args);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start kv_member");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { me, child: Some(child), stdin, lines }
    }

    /// The next line that starts with `prefix`, within [`WAIT`].
    ///
    /// # Panics
    ///
    /// If none comes in time.
    pub fn expect(&self, prefix: &str) -> String {
        self.expect_any(&[prefix])
    }

    /// The next line that starts with one of `prefixes`, within [`WAIT`].
    ///
    /// # Panics
    ///
    /// If none comes in time.
    pub fn expect_any(&self, prefixes: &[&str]) -> String {
        let me = self.me;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if prefixes.iter().any(|p| l.starts_with(p)) => return l,
                Ok(_) => {}
                Err(_) => panic!("member {me}: no line starting with {prefixes:?} within {WAIT:?}"),
            }
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (reaped here if so).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Writes `command` to its standard input.
    ///
    /// # Panics
    ///
    /// If the member's input is closed.
    pub fn tell(&mut self, command: &str) {
        writeln!(self.stdin.as_mut().expect("stdin"), "{command}").expect("tell a member");
    }

    /// Kills it with SIGKILL and reaps it.
    ///
    /// # Panics
    ///
    /// If it is not running.
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reaped");
    }

    /// Closes its input (it closes its group and exits) and waits for it, within [`WAIT`].
    ///
    /// # Panics
    ///
    /// If it exits with an error or not in time.
    pub fn finish(&mut self) {
        let me = self.me;
        drop(self.stdin.take());
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "member {me} exited with {status}");
                return;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                panic!("member {me} did not exit within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three members of `program` (a member binary that prints `listening ADDR`, then `ready` once
/// its view has three members): member 0 starts the group, 1 and 2 join through it; each gets
/// `extra` arguments. Returns them once all are ready, with their addresses.
///
/// # Panics
///
/// If a member does not start or get ready within [`WAIT`].
pub fn three_members(program: &str, extra: &[&str]) -> (Vec<Member>, Vec<String>) {
    let extra: Vec<OsString> = extra.iter().map(OsString::from).collect();
    let first = Member::spawn(program, 0, &extra);
    let a0 = first.expect("listening ")["listening ".len()..].to_string();
    let mut all = vec![first];
    let mut addrs = vec![a0.clone()];
    for me in 1..3 {
        let mut args = vec![OsString::from("--contact"), OsString::from(&a0)];
        args.extend(extra.iter().cloned());
        let m = Member::spawn(program, me, &args);
        addrs.push(m.expect("listening ")["listening ".len()..].to_string());
        all.push(m);
    }
    for m in &all {
        m.expect("ready");
    }
    (all, addrs)
}
