//! What the tests' member processes (`src/bin/kv_member.rs`, `src/bin/ledger_member.rs`) share:
//! their commands on standard input, and a member on a loopback listener with quick failure
//! detection.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

use derecho::driver::GroupBuilder;
use derecho::protocol::{MembershipConfig, NodeId};
use derecho::runtime::net::TcpListener;

/// The lines of standard input, read by a thread (the channel closes with the input).
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Member `me` of group `name` on a loopback listener bound now, whose address is printed
/// first (`listening ADDR`: known before a restart leader waits for the others), with a 5 ms
/// heartbeat, suspicion after 500 ms and a 3 s connect timeout. Call on the member's executor.
///
/// # Panics
///
/// If no loopback port can be bound.
pub fn loopback_member(me: u32, name: &str) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(500),
        ..MembershipConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).expect("a listener");
    println!("listening {}", listener.local_addr());
    GroupBuilder::new(NodeId(me), "127.0.0.1:0".parse().unwrap())
        .insecure()
        .listener(listener)
        .name(name)
        .membership(membership)
        .connect_timeout(Duration::from_secs(3))
}
