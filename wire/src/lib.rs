//! The wire formats of derecho that members and external clients share, with no I/O and no
//! runtime: the TCP frame header ([`frame`]), identifiers ([`ids`]), the error kinds of call
//! replies ([`remote`]), FNV-1a ([`hash`]) and the external-client protocol ([`client`]).
//!
//! The member crates (`derecho-runtime`, `derecho`) and the client crate (`derecho-client`)
//! depend on it, so a client speaks exactly what a member reads without linking the member.
//! Every decoder here validates foreign bytes and returns an error; none panics on them.

pub mod client;
pub mod frame;
pub mod hash;
pub mod ids;
pub mod remote;
pub mod tls;

/// The group tag a handshake carries: FNV-1a of the group's name and a number saying what the
/// connection is for (a view's transport, the control messages, client sessions).
pub fn tag(group: &str, what: u64) -> u32 {
    hash::Fnv32::new().write(group.as_bytes()).write(&what.to_le_bytes()).finish()
}

/// The tag of one-shot control messages to a member's listener (joins, restart offers).
pub fn control_tag(group: &str) -> u32 {
    tag(group, u64::MAX)
}

/// The tag of external clients' sessions with a member's listener ([`client`]).
pub fn session_tag(group: &str) -> u32 {
    tag(group, u64::MAX - 1)
}
