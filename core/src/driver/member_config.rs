//! A [`Group`](super::Group) member's configuration file (TOML), with the same environment and
//! command-line overrides as the static group's ([`GroupConfig`](super::GroupConfig)).
//!
//! ```toml
//! me = 3                          # this member's id (required)
//! listen = "127.0.0.1:7103"       # this member's listener, the one port of every view (required);
//!                                 # here and in `contact`, a host name is resolved when the file is read
//! advertise = "10.0.0.3:7103"     # the address peers use; default: the listen address
//! contact = "127.0.0.1:7100"      # a member of the group to join; omit to start a new group
//! group = "demo"                  # the group's name; groups of other names never connect; default "derecho"
//! spin_us = 50                    # executor spin budget before parking, µs; default 0
//! core = 1                        # pin this member's executor to this core; default unpinned
//! connect_timeout_ms = 2000       # a view's peer missing this long is reported failed; default 2000
//! join_timeout_ms = 30000         # how long joining waits for its welcome; default 30000
//! restart_timeout_ms = 300000     # how long a restarting member waits for its quorum; default 300000
//! metrics_listen = "127.0.0.1:9100"  # serve Prometheus metrics at http://ADDRESS/metrics; default: none
//! state_len_max = 67108864        # the largest shard state sent or accepted, bytes; default 64 MiB
//! transport = "shm"               # each view over "tcp" or "shm" (processes of this host); default "tcp"
//! shm_dir = "/dev/shm"            # where shared-memory views keep their files; default /dev/shm
//! allowed_ids = [0, 1, 2, 3]      # only these ids may join or come back with their logs; default any
//! insecure = false                # true: plaintext on purpose, logged loudly; either this or [tls] is required
//!
//! [tls]                           # mutual TLS on every connection: dir, or all of ca, cert and key
//! # dir = "/etc/kv/tls"           # holds ca.pem, node-ME.pem and node-ME.key (ME: `me`)
//! ca = "ca.pem"                   # the authority every peer's certificate must chain to (PEM)
//! cert = "node-3.pem"             # this member's chain (PEM), naming it node-3.derecho
//! key = "node-3.key"              # its private key (PEM)
//!
//! [membership]                    # PROTOCOLS §3; every field optional
//! heartbeat_ms = 10               # how often a member bumps its heartbeat; default 10
//! suspect_after_ms = 100          # a silent peer is suspected after this long; default 100
//! partition_safety = true         # a minority stops with Partitioned; default true
//! state_transfer_timeout_ms = 10000  # a new member waits this long for a shard's state; default 10000
//! lost_shards = "wait"            # a shard whose every member is gone: "wait" for one to come back
//!                                 # with its logs (default) or "start_empty" (accept the loss)
//!
//! [layout]                        # every member must have the same
//! shards = 1                      # shards of subgroup 0, members dealt round robin; default 1
//! min_per_shard = 1               # a view with fewer members per shard is inadequate; default 1
//! mode = "ordered"                # or "unordered"; default "ordered"
//!
//! # Instead of [layout], one [[subgroups]] table per subgroup (PROTOCOLS §5), in id order:
//! [[subgroups]]
//! name = "kv"                     # for messages; default "subgroup N"
//! policy = "flexible"             # "all", "fixed" or "flexible" (required)
//! shards = 2                      # fixed and flexible; default 1
//! per_shard = 3                   # fixed: members per shard (required)
//! min = 2                         # all: fewest members; flexible: fewest per shard; default 1
//! max = 4                         # flexible: most per shard; default min
//! mode = "ordered"                # every shard's mode; default "ordered"
//! shard_modes = ["unordered"]     # modes of the first shards, overriding `mode`
//! senders = "all"                 # "all", a number (the oldest N of each shard) or a list of ids
//! reserved = [[], [7]]            # node ids reserved for each shard
//! disjoint = false                # take no member an earlier disjoint subgroup took
//!
//! [clients]                       # external clients' sessions; every field optional
//! max = 1024                      # sessions at once
//! in_flight_max = 1024            # calls under way per session
//! queued_bytes_max = 16777216     # answers a client has not read; beyond, it is closed
//! idle_timeout_ms = 300000        # a silent session is closed
//! frame_max = 67108864            # the longest request
//! buffered_bytes_max = 67108864   # bytes of requests still arriving, all sessions together
//!
//! [limits]                        # as in the static group's file; every member must have the same
//! window_len = 4096
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::config::{LimitsConfig, TransportKind, de_address, de_address_opt, invalid, overlay, read};
use super::config::{TlsFile, TlsSettings, tls_or_insecure};
use super::{ClientLimits, ConfigError, GroupBuilder};
use crate::protocol::{
    ADDRESS_LEN_MAX, DeliveryMode, GroupLayout, Limits, LostShards, MembershipConfig, NodeId, OneShard, Policy,
    RoundRobinShards, Senders, ShardIndex, ShardRef, SubgroupId, SubgroupSpec,
};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipFile {
    heartbeat_ms: Option<u64>,
    suspect_after_ms: Option<u64>,
    partition_safety: Option<bool>,
    state_transfer_timeout_ms: Option<u64>,
    lost_shards: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    max: Option<usize>,
    in_flight_max: Option<usize>,
    queued_bytes_max: Option<usize>,
    idle_timeout_ms: Option<u64>,
    frame_max: Option<usize>,
    buffered_bytes_max: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    shards: Option<u16>,
    min_per_shard: Option<u32>,
    mode: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum SendersFile {
    Word(String),
    Count(u64),
    Ids(Vec<u32>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubgroupFile {
    name: Option<String>,
    policy: String,
    shards: Option<u16>,
    per_shard: Option<u32>,
    min: Option<u32>,
    max: Option<u32>,
    mode: Option<String>,
    #[serde(default)]
    shard_modes: Vec<String>,
    senders: Option<SendersFile>,
    #[serde(default)]
    reserved: Vec<Vec<u32>>,
    #[serde(default)]
    disjoint: bool,
}

fn mode_of(key: &str, m: &str) -> Result<DeliveryMode, ConfigError> {
    match m {
        "ordered" => Ok(DeliveryMode::Ordered),
        "unordered" => Ok(DeliveryMode::Unordered),
        other => Err(invalid(key, format!("{other:?}: ordered or unordered"))),
    }
}

impl SubgroupFile {
    fn spec(&self, i: usize) -> Result<SubgroupSpec, ConfigError> {
        let key = |k: &str| format!("subgroups[{i}].{k}");
        let name = self.name.clone().unwrap_or_else(|| format!("subgroup {i}"));
        let shards = self.shards.unwrap_or(1);
        let min = self.min.unwrap_or(1) as usize;
        let policy = match self.policy.as_str() {
            "all" => Policy::AllMembers { min },
            "fixed" => Policy::Fixed {
                shards,
                per_shard: self.per_shard.ok_or_else(|| invalid(key("per_shard"), "required by a fixed policy"))?
                    as usize,
            },
            "flexible" => Policy::Flexible { shards, min, max: self.max.map_or(min, |m| m as usize) },
            other => return Err(invalid(key("policy"), format!("{other:?}: all, fixed or flexible"))),
        };
        let mut spec = SubgroupSpec::new(name, policy);
        spec.mode = mode_of(&key("mode"), self.mode.as_deref().unwrap_or("ordered"))?;
        spec.shard_modes =
            self.shard_modes.iter().map(|m| mode_of(&key("shard_modes"), m)).collect::<Result<_, _>>()?;
        spec.senders = match &self.senders {
            None => Senders::All,
            Some(SendersFile::Word(w)) if w == "all" => Senders::All,
            Some(SendersFile::Word(w)) => {
                return Err(invalid(key("senders"), format!("{w:?}: \"all\", a number or a list of ids")));
            }
            Some(SendersFile::Count(n)) => Senders::First(*n as usize),
            Some(SendersFile::Ids(v)) => Senders::Only(v.iter().map(|&n| NodeId(n)).collect()),
        };
        spec.reserved = self.reserved.iter().map(|v| v.iter().map(|&n| NodeId(n)).collect()).collect();
        spec.disjoint = self.disjoint;
        spec.validate().map_err(|e| invalid(format!("subgroups[{i}]"), e))?;
        Ok(spec)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    me: u32,
    #[serde(deserialize_with = "de_address")]
    listen: SocketAddr,
    advertise: Option<String>,
    #[serde(default, deserialize_with = "de_address_opt")]
    contact: Option<SocketAddr>,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default)]
    spin_us: u64,
    core: Option<usize>,
    #[serde(default = "two_s")]
    connect_timeout_ms: u64,
    #[serde(default = "thirty_s")]
    join_timeout_ms: u64,
    #[serde(default = "five_min")]
    restart_timeout_ms: u64,
    #[serde(default, deserialize_with = "de_address_opt")]
    metrics_listen: Option<SocketAddr>,
    #[serde(default = "sixty_four_mib")]
    state_len_max: usize,
    #[serde(default = "tcp")]
    transport: TransportKind,
    #[serde(default = "dev_shm")]
    shm_dir: PathBuf,
    allowed_ids: Option<Vec<u32>>,
    #[serde(default)]
    insecure: bool,
    tls: Option<TlsFile>,
    #[serde(default)]
    membership: MembershipFile,
    #[serde(default)]
    clients: ClientsFile,
    layout: Option<LayoutFile>,
    #[serde(default)]
    subgroups: Vec<SubgroupFile>,
    #[serde(default)]
    limits: LimitsConfig,
}

fn default_group() -> String {
    "derecho".into()
}
fn two_s() -> u64 {
    2_000
}
fn thirty_s() -> u64 {
    30_000
}
fn five_min() -> u64 {
    300_000
}
fn sixty_four_mib() -> usize {
    64 << 20
}
fn tcp() -> TransportKind {
    TransportKind::Tcp
}
fn dev_shm() -> PathBuf {
    PathBuf::from("/dev/shm")
}

/// A validated member configuration; [`GroupMemberConfig::builder`] turns it into a
/// [`GroupBuilder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMemberConfig {
    /// This member.
    pub me: NodeId,
    /// Its listener.
    pub listen: SocketAddr,
    /// The address peers use, if not `listen`.
    pub advertise: Option<String>,
    /// A member to join through; `None` starts a new group.
    pub contact: Option<SocketAddr>,
    /// The group's name.
    pub group: String,
    /// Executor spin budget.
    pub spin: Duration,
    /// The core to pin to.
    pub core: Option<usize>,
    /// See [`GroupBuilder::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`GroupBuilder::join_timeout`].
    pub join_timeout: Duration,
    /// See [`GroupBuilder::restart_timeout`].
    pub restart_timeout: Duration,
    /// See [`GroupBuilder::metrics_listen`].
    pub metrics_listen: Option<SocketAddr>,
    /// See [`GroupBuilder::state_len_max`].
    pub state_len_max: usize,
    /// See [`GroupBuilder::transport`].
    pub transport: TransportKind,
    /// See [`GroupBuilder::shm_dir`].
    pub shm_dir: PathBuf,
    /// Heartbeat, suspicion, partition safety, state-transfer timeout.
    pub membership: MembershipConfig,
    /// Shards of subgroup 0.
    pub shards: u16,
    /// Fewest members per shard.
    pub min_per_shard: usize,
    /// Delivery mode of every shard.
    pub mode: DeliveryMode,
    /// The `[[subgroups]]` of the file; when present they replace `shards`, `min_per_shard`
    /// and `mode`.
    pub subgroups: Option<GroupLayout>,
    /// Limits.
    pub limits: Limits,
    /// How the member bounds its external clients.
    pub clients: ClientLimits,
    /// See [`GroupBuilder::allow_only`].
    pub allowed_ids: Option<Vec<NodeId>>,
    /// See [`GroupBuilder::tls`].
    pub tls: Option<TlsSettings>,
    /// See [`GroupBuilder::insecure`].
    pub insecure: bool,
}

impl GroupMemberConfig {
    /// Reads a file, then applies environment (`DERECHO_*`) and `--set key=value` overrides.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the key at fault.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let (file, sources) = overlay(&text, Some(path), env, sets)?;
        Self::validate(file).map_err(|e| sources.locate(e))
    }

    /// As [`GroupMemberConfig::load`], from text.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the key at fault.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let (file, sources) = overlay(text, None, env, sets)?;
        Self::validate(file).map_err(|e| sources.locate(e))
    }

    fn validate(f: File) -> Result<Self, ConfigError> {
        let limits = f.limits.resolve()?;
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let d = MembershipConfig::default();
        let membership = MembershipConfig {
            heartbeat: ms(f.membership.heartbeat_ms, d.heartbeat),
            suspect_after: ms(f.membership.suspect_after_ms, d.suspect_after),
            partition_safety: f.membership.partition_safety.unwrap_or(d.partition_safety),
            state_transfer_timeout: ms(f.membership.state_transfer_timeout_ms, d.state_transfer_timeout),
            lost_shards: match f.membership.lost_shards.as_deref() {
                None | Some("wait") => LostShards::Wait,
                Some("start_empty") => LostShards::StartEmpty,
                Some(_) => return Err(invalid("membership.lost_shards", "must be \"wait\" or \"start_empty\"")),
            },
        };
        membership.validate().map_err(|e| {
            let key = match e.field {
                "heartbeat" => "membership.heartbeat_ms",
                "suspect_after" => "membership.suspect_after_ms",
                _ => "membership.state_transfer_timeout_ms",
            };
            invalid(key, e.reason)
        })?;
        let dc = ClientLimits::default();
        let clients = ClientLimits {
            max: f.clients.max.unwrap_or(dc.max),
            in_flight_max: f.clients.in_flight_max.unwrap_or(dc.in_flight_max),
            queued_bytes_max: f.clients.queued_bytes_max.unwrap_or(dc.queued_bytes_max),
            idle: ms(f.clients.idle_timeout_ms, dc.idle),
            frame_max: f.clients.frame_max.unwrap_or(dc.frame_max),
            buffered_bytes_max: f.clients.buffered_bytes_max.unwrap_or(dc.buffered_bytes_max),
        };
        for (key, v) in [
            ("clients.max", clients.max),
            ("clients.in_flight_max", clients.in_flight_max),
            ("clients.queued_bytes_max", clients.queued_bytes_max),
            ("clients.frame_max", clients.frame_max),
            ("clients.buffered_bytes_max", clients.buffered_bytes_max),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if clients.idle.is_zero() {
            return Err(invalid("clients.idle_timeout_ms", "must be above zero"));
        }
        if clients.frame_max > u32::MAX as usize {
            return Err(invalid("clients.frame_max", "must be at most 4294967295"));
        }
        if clients.buffered_bytes_max < clients.frame_max {
            return Err(invalid("clients.buffered_bytes_max", "must be at least clients.frame_max"));
        }
        let subgroups = if f.subgroups.is_empty() {
            None
        } else {
            if f.layout.is_some() {
                return Err(invalid("layout", "give either [layout] or [[subgroups]], not both"));
            }
            let specs = f.subgroups.iter().enumerate().map(|(i, s)| s.spec(i)).collect::<Result<Vec<_>, _>>()?;
            let total: usize = specs
                .iter()
                .map(|s| match s.policy {
                    Policy::AllMembers { .. } => 1,
                    Policy::Fixed { shards, .. } | Policy::Flexible { shards, .. } => usize::from(shards),
                })
                .sum();
            if total > limits.shards_max as usize {
                return Err(invalid("subgroups", format!("{total} shards in all, above limits.shards_max")));
            }
            Some(GroupLayout::new(specs).map_err(|e| invalid("subgroups", e))?)
        };
        let layout = f.layout.unwrap_or_default();
        let mode = mode_of("layout.mode", layout.mode.as_deref().unwrap_or("ordered"))?;
        let shards = layout.shards.unwrap_or(1);
        if shards == 0 || u32::from(shards) > limits.shards_max {
            return Err(invalid(
                "layout.shards",
                format!("must be from 1 to limits.shards_max ({})", limits.shards_max),
            ));
        }
        let min_per_shard = layout.min_per_shard.unwrap_or(1);
        if min_per_shard == 0 || u64::from(min_per_shard) * u64::from(shards) > u64::from(limits.members_max) {
            return Err(invalid("layout.min_per_shard", "must be at least 1, and shards times it at most members_max"));
        }
        if let Some(a) = &f.advertise
            && (a.len() > ADDRESS_LEN_MAX || a.parse::<SocketAddr>().is_err())
        {
            return Err(invalid("advertise", format!("an IP address and port of at most {ADDRESS_LEN_MAX} bytes")));
        }
        if f.group.is_empty() {
            return Err(invalid("group", "must not be empty"));
        }
        if f.transport == TransportKind::Shm
            && (f.group.len() > 48 || !f.group.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(invalid("group", "over shared memory: 1 to 48 letters, digits, '_', '.' or '-'"));
        }
        if f.spin_us > 1_000_000 {
            return Err(invalid("spin_us", format!("{} is more than one second (1000000)", f.spin_us)));
        }
        if f.core.is_some_and(|c| c >= 1024) {
            return Err(invalid("core", "must be below 1024"));
        }
        if f.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be above zero"));
        }
        if f.join_timeout_ms == 0 {
            return Err(invalid("join_timeout_ms", "must be above zero"));
        }
        if f.restart_timeout_ms == 0 {
            return Err(invalid("restart_timeout_ms", "must be above zero"));
        }
        let tls = tls_or_insecure(f.tls, f.insecure, f.me)?;
        if f.state_len_max == 0 || f.state_len_max > u32::MAX as usize - 64 {
            return Err(invalid("state_len_max", "must be from 1 to 4294967231"));
        }
        Ok(Self {
            me: NodeId(f.me),
            listen: f.listen,
            advertise: f.advertise,
            contact: f.contact,
            group: f.group,
            spin: Duration::from_micros(f.spin_us),
            core: f.core,
            connect_timeout: Duration::from_millis(f.connect_timeout_ms),
            join_timeout: Duration::from_millis(f.join_timeout_ms),
            restart_timeout: Duration::from_millis(f.restart_timeout_ms),
            metrics_listen: f.metrics_listen,
            state_len_max: f.state_len_max,
            transport: f.transport,
            shm_dir: f.shm_dir,
            membership,
            shards,
            min_per_shard: min_per_shard as usize,
            mode,
            subgroups,
            limits,
            clients,
            allowed_ids: f.allowed_ids.map(|ids| ids.into_iter().map(NodeId).collect()),
            tls,
            insecure: f.insecure,
        })
    }

    /// The shards of subgroup 0 this layout has.
    pub fn shard_refs(&self) -> Vec<ShardRef> {
        let n = match self.subgroups.as_ref().map(|l| &l.subgroups[0].policy) {
            None => self.shards,
            Some(Policy::AllMembers { .. }) => 1,
            Some(Policy::Fixed { shards, .. } | Policy::Flexible { shards, .. }) => *shards,
        };
        (0..n).map(|s| ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(s) }).collect()
    }

    /// A builder with every setting of this file.
    pub fn builder(&self) -> GroupBuilder {
        let mut b = GroupBuilder::new(self.me, self.listen)
            .name(self.group.clone())
            .limits(self.limits.clone())
            .membership(self.membership.clone())
            .client_limits(self.clients.clone())
            .connect_timeout(self.connect_timeout)
            .join_timeout(self.join_timeout)
            .restart_timeout(self.restart_timeout)
            .state_len_max(self.state_len_max)
            .transport(self.transport)
            .shm_dir(self.shm_dir.clone());
        b = if let Some(l) = &self.subgroups {
            b.layout(l.clone())
        } else if self.shards == 1 {
            b.layout(OneShard { mode: self.mode, min_members: self.min_per_shard })
        } else {
            b.layout(RoundRobinShards { shards: self.shards, mode: self.mode, min_per_shard: self.min_per_shard })
        };
        if let Some(a) = &self.advertise {
            b = b.advertise(a.clone());
        }
        if let Some(a) = self.metrics_listen {
            b = b.metrics_listen(a);
        }
        if let Some(ids) = &self.allowed_ids {
            b = b.allow_only(ids.iter().copied());
        }
        if let Some(t) = &self.tls {
            b = b.tls(t.identity.clone());
        }
        if self.insecure {
            b = b.insecure();
        }
        b
    }

    /// An executor builder with this member's placement and spin budget.
    pub fn executor(&self) -> derecho_runtime::Builder {
        let b = derecho_runtime::Builder::new().name(format!("derecho-{}", self.me)).spin_budget(self.spin);
        match self.core {
            Some(c) => b.pin_to_core(c),
            None => b.placement(derecho_runtime::Placement::Unpinned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plaintext on purpose: a test that gives `[tls]` says `insecure=false`.
    const BASE: &str = "me = 2\nlisten = \"127.0.0.1:7102\"\ninsecure = true\n";

    fn load(sets: &[&str]) -> Result<GroupMemberConfig, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        GroupMemberConfig::from_toml(BASE, Vec::new(), &sets)
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load(&[]).unwrap();
        assert_eq!((c.me, c.contact, c.group.as_str()), (NodeId(2), None, "derecho"));
        assert_eq!(c.clients, ClientLimits::default());
        assert_eq!(c.allowed_ids, None);
        let c = load(&["allowed_ids=[3, 1]"]).unwrap();
        assert_eq!(c.allowed_ids, Some(vec![NodeId(3), NodeId(1)]));
        assert_eq!((c.tls.is_none(), c.insecure), (true, true));
        // Neither TLS nor insecure: refused, saying what to give.
        let e = load(&["insecure=false"]).unwrap_err().to_string();
        assert!(e.contains("tls") && e.contains("missing") && e.contains("insecure = true"), "{e}");
        // TLS files: read when the file is; an error names the file.
        let dir = std::env::temp_dir().join(format!("derecho-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = derecho_runtime::tls::DevCa::new().unwrap();
        ca.write(&dir, "node-2", "node-2.derecho").unwrap();
        let set = |k: &str, f: &str| format!("tls.{k}=\"{}\"", dir.join(f).display());
        let tls = |ca: &str, cert: &str, key: &str| {
            load(&["insecure=false", &set("ca", ca), &set("cert", cert), &set("key", key)])
        };
        let c = tls("ca.pem", "node-2.pem", "node-2.key").unwrap();
        assert_eq!(c.tls.as_ref().map(|t| t.identity.name()), Some("node-2.derecho"));
        let e = tls("ca.pem", "missing.pem", "node-2.key").unwrap_err();
        assert!(e.to_string().contains("missing.pem") && e.to_string().contains("cannot read"), "{e}");
        let e = tls("node-2.key", "node-2.pem", "node-2.key").unwrap_err();
        assert!(e.to_string().contains("node-2.key") && e.to_string().contains("no certificate"), "{e}");
        // A directory: the files named after `me`.
        let c = load(&["insecure=false", &format!("tls.dir=\"{}\"", dir.display())]).unwrap();
        assert_eq!((c.tls.as_ref().map(|t| t.cert.clone())), Some(dir.join("node-2.pem")));
        let e = load(&["insecure=false", &format!("tls.dir=\"{}\"", dir.display()), &set("ca", "ca.pem")]).unwrap_err();
        assert!(e.to_string().contains("either dir"), "{e}");
        let e = load(&["insecure=false", "me=3", &format!("tls.dir=\"{}\"", dir.display())]).unwrap_err();
        assert!(e.to_string().contains("node-3.pem") && e.to_string().contains("cannot read"), "{e}");
        let e = load(&["insecure=true", &set("ca", "ca.pem"), &set("cert", "node-2.pem"), &set("key", "node-2.key")]);
        assert!(e.unwrap_err().to_string().contains("insecure"));
        let _ = std::fs::remove_dir_all(&dir);
        let c = load(&["clients.max=7", "clients.idle_timeout_ms=1500"]).unwrap();
        assert_eq!((c.clients.max, c.clients.idle), (7, Duration::from_millis(1500)));
        assert_eq!(c.membership, MembershipConfig::default());
        assert_eq!((c.shards, c.min_per_shard, c.mode), (1, 1, DeliveryMode::Ordered));
        assert_eq!((c.transport, c.shm_dir.as_path()), (TransportKind::Tcp, Path::new("/dev/shm")));
        let c = load(&["transport=\"shm\"", "shm_dir=\"/dev/shm/x\""]).unwrap();
        assert_eq!((c.transport, c.shm_dir.as_path()), (TransportKind::Shm, Path::new("/dev/shm/x")));
        let c = load(&[
            "contact=\"127.0.0.1:7100\"",
            "membership.heartbeat_ms=2",
            "membership.suspect_after_ms=50",
            "layout.shards=2",
            "layout.min_per_shard=2",
        ])
        .unwrap();
        assert_eq!(c.contact, Some("127.0.0.1:7100".parse().unwrap()));
        assert_eq!(c.restart_timeout, Duration::from_secs(300));
        // Host names are resolved where addresses are taken.
        let named = load(&["contact=\"localhost:7100\"", "restart_timeout_ms=5000"]).unwrap();
        assert!(named.contact.is_some_and(|a| a.ip().is_loopback() && a.port() == 7100));
        assert_eq!(named.restart_timeout, Duration::from_secs(5));
        assert_eq!(
            (c.membership.heartbeat, c.membership.suspect_after),
            (Duration::from_millis(2), Duration::from_millis(50))
        );
        assert_eq!(c.shard_refs().len(), 2);
    }

    #[test]
    fn subgroups_from_the_file() {
        let text = format!(
            "{BASE}
[[subgroups]]
name = \"kv\"
policy = \"flexible\"
shards = 2
min = 1
max = 3
senders = 1
reserved = [[], [7]]
disjoint = true

[[subgroups]]
policy = \"all\"
mode = \"unordered\"
senders = [0, 2]
"
        );
        let c = GroupMemberConfig::from_toml(&text, Vec::new(), &[]).unwrap();
        let l = c.subgroups.clone().expect("subgroups");
        assert_eq!(l.subgroups.len(), 2);
        assert_eq!(l.subgroups[0].policy, Policy::Flexible { shards: 2, min: 1, max: 3 });
        assert_eq!(l.subgroups[0].senders, Senders::First(1));
        assert_eq!(l.subgroups[0].reserved, vec![vec![], vec![NodeId(7)]]);
        assert_eq!(l.subgroups[1].name, "subgroup 1");
        assert_eq!(l.subgroups[1].mode, DeliveryMode::Unordered);
        assert_eq!(l.subgroups[1].senders, Senders::Only(vec![NodeId(0), NodeId(2)]));
        assert_eq!(c.shard_refs().len(), 2);
        let bad: &[(&str, &str)] = &[
            ("[[subgroups]]\npolicy = \"fixed\"\n", "subgroups[0].per_shard"),
            ("[[subgroups]]\npolicy = \"ring\"\n", "subgroups[0].policy"),
            ("[[subgroups]]\npolicy = \"all\"\nsenders = \"some\"\n", "subgroups[0].senders"),
            ("[[subgroups]]\npolicy = \"flexible\"\nmin = 3\nmax = 2\n", "subgroups[0]"),
            ("[layout]\nshards = 1\n[[subgroups]]\npolicy = \"all\"\n", "layout"),
            ("[[subgroups]]\npolicy = \"fixed\"\nshards = 300\nper_shard = 1\n", "subgroups"),
        ];
        for (extra, needle) in bad {
            let e = GroupMemberConfig::from_toml(&format!("{BASE}{extra}"), Vec::new(), &[]).expect_err(needle);
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["membership.heartbeat_ms=0"], "membership.heartbeat_ms"),
            (&["clients.max=0"], "clients.max"),
            (&["clients.idle_timeout_ms=0"], "clients.idle_timeout_ms"),
            (&["clients.frame_max=5000000000"], "clients.frame_max"),
            (&["clients.buffered_bytes_max=65536"], "clients.buffered_bytes_max"),
            (&["membership.heartbeat_ms=60", "membership.suspect_after_ms=100"], "membership.suspect_after_ms"),
            (&["membership.beat=1"], "beat"),
            (&["layout.mode=sideways"], "layout.mode"),
            (&["layout.shards=0"], "layout.shards"),
            (&["contact=nowhere"], "contact"),
            (&["group=\"\""], "group"),
            (&["connect_timeout_ms=0"], "connect_timeout_ms"),
            (&["join_timeout_ms=0"], "join_timeout_ms"),
            (&["restart_timeout_ms=0"], "restart_timeout_ms"),
            (&["listen=\"no-such-host.invalid:1\""], "listen"),
            (&["advertise=\"db.example:7000\""], "advertise"),
            (&["state_len_max=0"], "state_len_max"),
            (&["transport=\"rdma\""], "transport"),
            (&["transport=\"shm\"", "group=\"a b\""], "group"),
            (&["limits.window_len=0"], "limits.window_len"),
        ];
        for (sets, needle) in cases {
            let e = load(sets).expect_err(needle).to_string();
            assert!(e.contains(needle), "{sets:?}: {e}");
        }
    }

    /// The fields a table accepts, from serde's "unknown field" error.
    fn accepted(e: &ConfigError) -> Vec<String> {
        let text = e.to_string();
        let list = text.split("`zz_unknown`, expected").nth(1).unwrap_or_else(|| panic!("no field list in {text}"));
        let list = list.split(" (").next().unwrap_or(list);
        list.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    fn blocks(page: &str) -> Vec<String> {
        page.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn every_key_is_documented_with_its_default() {
        use crate::driver::GroupConfig;
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../book/src/config.md"))
            .expect("book/src/config.md");
        let b = blocks(&page);
        assert_eq!(b.len(), 3, "the page has three TOML blocks: member, subgroups, static group");
        let mentions =
            |block: &str, key: &str| block.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} =")));
        // A member: the block loads, gives the defaults, and names every key of every table.
        let documented = GroupMemberConfig::from_toml(&b[0], Vec::new(), &[]).expect("the member block loads");
        let defaults =
            GroupMemberConfig::from_toml("me = 0\nlisten = \"127.0.0.1:7000\"\ninsecure = true\n", Vec::new(), &[])
                .unwrap();
        assert_eq!(documented, defaults, "the page's values are not the defaults");
        for table in ["", "membership.", "clients.", "layout.", "limits."] {
            let e = load(&[&format!("{table}zz_unknown=1")]).expect_err("an unknown key");
            for key in accepted(&e) {
                let documented = mentions(&b[0], &key)
                    || (table.is_empty()
                        && (b[0].contains(&format!("[{key}]")) || b[1].contains(&format!("[[{key}]]"))));
                assert!(documented, "key {table}{key} is not on the page");
            }
        }
        // Subgroups: the example loads, and names every key.
        GroupMemberConfig::from_toml(&format!("{BASE}{}", b[1]), Vec::new(), &[]).expect("the subgroups block loads");
        let e = GroupMemberConfig::from_toml(
            &format!("{BASE}[[subgroups]]\npolicy = \"all\"\nzz_unknown = 1\n"),
            Vec::new(),
            &[],
        )
        .expect_err("an unknown key");
        for key in accepted(&e) {
            assert!(mentions(&b[1], &key), "key subgroups[].{key} is not on the page");
        }
        // A static group: the same.
        let documented = GroupConfig::from_toml(&b[2], Vec::new(), &[]).expect("the static block loads");
        let minimal = "me = 0\ninsecure = true\n[[members]]\nid = 0\naddress = \"127.0.0.1:7000\"\n";
        assert_eq!(documented, GroupConfig::from_toml(minimal, Vec::new(), &[]).unwrap(), "static defaults differ");
        let unknown =
            |extra: &str| GroupConfig::from_toml(&format!("{minimal}{extra}"), Vec::new(), &[]).expect_err("unknown");
        for (extra, what) in [
            ("zz_unknown = 1\n", ""),
            ("[limits]\nzz_unknown = 1\n", "limits."),
            ("[[members]]\nid = 1\nzz_unknown = 1\n", "members[]."),
            ("[[shards]]\nmembers = [0]\nzz_unknown = 1\n", "shards[]."),
        ] {
            let extra = if what.is_empty() { format!("zz_unknown = 1\n{minimal}") } else { extra.to_string() };
            let e = if what.is_empty() {
                GroupConfig::from_toml(&extra, Vec::new(), &[]).expect_err("unknown")
            } else {
                unknown(&extra)
            };
            for key in accepted(&e) {
                let documented =
                    mentions(&b[2], &key) || b[2].contains(&format!("[{key}]")) || b[2].contains(&format!("[[{key}]]"));
                assert!(documented, "static key {what}{key} is not on the page");
            }
        }
    }
}
