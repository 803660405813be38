//! The names most programs need, in one import: `use derecho::prelude::*;`.
//!
//! * starting an executor: [`Builder`];
//! * a group and its members: [`GroupBuilder`], [`Group`], [`GroupMemberConfig`] (from a file),
//!   [`NodeId`], [`View`];
//! * replicated objects: [`replicated`], [`Service`], [`ShardRef`], [`SubgroupId`], [`Version`],
//!   [`CallError`], [`Persistent`], and rkyv's derives [`Archive`], [`Serialize`] and
//!   [`Deserialize`] for a replicated type's state (with `#[rkyv(crate = derecho::rkyv)]`, as
//!   the application does not depend on rkyv itself);
//! * clients outside the group: [`ExternalClient`], [`ExternalHandle`];
//! * mutual TLS: [`TlsIdentity`] (from files), [`DevCa`] (a throw-away authority for a demo),
//!   [`node_name`] (the name a member's certificate carries).

pub use crate::Builder;
pub use crate::driver::{Group, GroupBuilder, GroupMemberConfig};
pub use crate::persist::Persistent;
pub use crate::protocol::{NodeId, ShardRef, SubgroupId, Version, View};
pub use crate::replicated;
pub use crate::rpc::support::rkyv::{Archive, Deserialize, Serialize};
pub use crate::rpc::{CallError, ExternalClient, ExternalHandle, Service};
pub use derecho_runtime::tls::{DevCa, TlsIdentity, node_name};
