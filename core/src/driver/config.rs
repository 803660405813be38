//! A static group's configuration file (TOML), with environment and command-line overrides.
//!
//! ```toml
//! me = 0                      # this member's id (required)
//! transport = "tcp"           # "tcp" or "shm"; default "tcp"
//! spin_us = 50                # executor spin budget before parking, µs; default 0
//! core = 1                    # pin this member's executor to this core; default unpinned
//! start_timeout_ms = 30000    # start-up barrier and connection timeout; default 30000
//! shm_namespace = "derecho"   # names the /dev/shm files of a shm group; default "derecho"
//!
//! [limits]                    # every field optional; defaults as in `Limits::default()`
//! window_len = 4096
//! payload_len_max = 10240
//! ring_len = 1048576
//!
//! [[members]]                 # in rank order (oldest first)
//! id = 0
//! address = "127.0.0.1:7000"  # TCP listen address; unused by shm
//!
//! [[shards]]                  # optional; default: one ordered shard of every member, all senders
//! members = [0, 1, 2]
//! senders = [0, 1, 2]         # default: every member of the shard
//! mode = "ordered"            # or "unordered"; default "ordered"
//! ```
//!
//! Overrides, applied in this order after the file: environment variables `DERECHO_<KEY>` (for
//! top-level keys, e.g. `DERECHO_ME=2`, `DERECHO_SPIN_US=0`) and command-line `--set key=value`
//! (any key path, e.g. `--set limits.window_len=64`). Values are TOML (`tcp` may be given without
//! quotes). Unknown keys and invalid values are errors that name the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{DeliveryMode, Limits, NodeId, ShardIndex, ShardLayout, ShardRef, SubgroupId, View, ViewId};

/// Which transport the group runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP via io_uring.
    Tcp,
    /// Shared memory between processes of one host.
    Shm,
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id.
    pub id: u32,
    /// TCP listen address (required for TCP groups).
    pub address: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardConfig {
    members: Vec<u32>,
    senders: Option<Vec<u32>>,
    #[serde(default = "ordered")]
    mode: String,
}

fn ordered() -> String {
    "ordered".into()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsConfig {
    window_len: Option<u32>,
    payload_len_max: Option<u32>,
    ring_len: Option<u32>,
    members_max: Option<u32>,
    shards_max: Option<u32>,
    changes_max: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    me: u32,
    #[serde(default = "tcp")]
    transport: TransportKind,
    #[serde(default)]
    spin_us: u64,
    core: Option<usize>,
    #[serde(default = "thirty_s")]
    start_timeout_ms: u64,
    #[serde(default = "default_ns")]
    shm_namespace: String,
    #[serde(default)]
    limits: LimitsConfig,
    members: Vec<MemberConfig>,
    #[serde(default)]
    shards: Vec<ShardConfig>,
}

fn tcp() -> TransportKind {
    TransportKind::Tcp
}
fn thirty_s() -> u64 {
    30_000
}
fn default_ns() -> String {
    "derecho".into()
}

/// A validated static-group configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// This member.
    pub me: NodeId,
    /// The transport.
    pub transport: TransportKind,
    /// Executor spin budget.
    pub spin: Duration,
    /// The core this member's executor is pinned to; `None` leaves placement to the scheduler.
    pub core: Option<usize>,
    /// Start-up timeout (connection and barrier).
    pub start_timeout: Duration,
    /// Namespace of shared-memory files.
    pub shm_namespace: String,
    /// Limits.
    pub limits: Limits,
    /// Members with their addresses, in rank order.
    pub members: Vec<MemberConfig>,
    /// The view (id 0) with its shard layout.
    pub view: View,
}

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type (toml names it).
    #[error("configuration: {0}")]
    Parse(String),
    /// An override is not `key=value`.
    #[error("override {0:?} is not key=value")]
    Override(String),
    /// A value breaks a rule; the first field names the key.
    #[error("configuration key {key}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl LimitsConfig {
    /// The limits, defaults filled in, validated.
    pub(super) fn resolve(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            window_len: self.window_len.unwrap_or(d.window_len),
            payload_len_max: self.payload_len_max.unwrap_or(d.payload_len_max),
            ring_len: self.ring_len.unwrap_or(d.ring_len),
            members_max: self.members_max.unwrap_or(d.members_max),
            shards_max: self.shards_max.unwrap_or(d.shards_max),
            changes_max: self.changes_max.unwrap_or(d.changes_max),
        };
        limits.validate().map_err(|e| invalid(format!("limits.{}", e.field), e.reason))?;
        Ok(limits)
    }
}

/// The text of a configuration file.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })
}

/// Parses `text`, applies the `DERECHO_*` environment variables and the `--set` overrides, and
/// deserializes the result (unknown keys and wrong types are errors naming the key).
pub(super) fn overlay<T: serde::de::DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<T, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("DERECHO_")).collect();
    env.sort();
    for (k, v) in env {
        let key = k.trim_start_matches("DERECHO_").to_ascii_lowercase();
        set_path(&mut table, &key, parse_value(&v))?;
    }
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Override(s.clone()))?;
        set_path(&mut table, k.trim(), parse_value(v.trim()))?;
    }
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

fn parse_value(raw: &str) -> toml::Value {
    // A bare word (`tcp`) is taken as a string; anything TOML can parse as a value keeps its type.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|l| !l.is_empty()).ok_or_else(|| ConfigError::Override(key.into()))?;
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| invalid(key, format!("{p} is not a table")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

impl GroupConfig {
    /// An executor builder with this member's placement and spin budget.
    pub fn executor(&self) -> derecho_runtime::Builder {
        let b = derecho_runtime::Builder::new().name(format!("derecho-{}", self.me)).spin_budget(self.spin);
        match self.core {
            Some(c) => b.pin_to_core(c),
            None => b.placement(derecho_runtime::Placement::Unpinned),
        }
    }

    /// A tag derived from the members, their addresses, the layout and the limits: TCP peers
    /// refuse a peer whose tag differs, so two groups configured differently on the same ports
    /// never connect to each other.
    pub fn group_tag(&self) -> u32 {
        // FNV-1a over a canonical description: deterministic across processes and builds.
        let text = format!("{:?}|{:?}|{:?}|{:?}", self.members, self.view.shards, self.limits, self.transport);
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h
    }

    /// The TCP address of member `id`, if it has one.
    pub fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.members.iter().find(|m| m.id == id.0).and_then(|m| m.address)
    }

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
        Self::from_toml(&read(path)?, env, sets)
    }

    /// As [`GroupConfig::load`], from text.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the key at fault.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        Self::validate(overlay(text, env, sets)?)
    }

    fn validate(f: FileConfig) -> Result<Self, ConfigError> {
        let limits = f.limits.resolve()?;
        if f.members.is_empty() {
            return Err(invalid("members", "at least one member is required"));
        }
        let members: Vec<NodeId> = f.members.iter().map(|m| NodeId(m.id)).collect();
        if !members.contains(&NodeId(f.me)) {
            return Err(invalid("me", format!("{} is not among members", f.me)));
        }
        if f.transport == TransportKind::Tcp
            && let Some(m) = f.members.iter().find(|m| m.address.is_none())
        {
            return Err(invalid("members.address", format!("member {} has no address (required for tcp)", m.id)));
        }
        if f.spin_us > 1_000_000 {
            return Err(invalid("spin_us", format!("{} is more than one second (1000000)", f.spin_us)));
        }
        if f.core.is_some_and(|c| c >= 1024) {
            return Err(invalid("core", "must be below 1024"));
        }
        if f.shm_namespace.is_empty()
            || !f.shm_namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(invalid("shm_namespace", "letters, digits, '_', '.' or '-' only"));
        }
        let shards = if f.shards.is_empty() {
            vec![ShardLayout {
                id: ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) },
                members: members.clone(),
                senders: members.clone(),
                mode: DeliveryMode::Ordered,
            }]
        } else {
            f.shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mode = match s.mode.as_str() {
                        "ordered" => DeliveryMode::Ordered,
                        "unordered" => DeliveryMode::Unordered,
                        other => {
                            return Err(invalid(
                                format!("shards[{i}].mode"),
                                format!("{other:?}: ordered or unordered"),
                            ));
                        }
                    };
                    let ms: Vec<NodeId> = s.members.iter().map(|&m| NodeId(m)).collect();
                    Ok(ShardLayout {
                        id: ShardRef { subgroup: SubgroupId(i as u16), shard: ShardIndex(0) },
                        senders: s
                            .senders
                            .as_ref()
                            .map_or_else(|| ms.clone(), |v| v.iter().map(|&m| NodeId(m)).collect()),
                        members: ms,
                        mode,
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let view = View { id: ViewId(0), members, shards };
        view.validate(&limits).map_err(|e| invalid("shards", e.to_string()))?;
        Ok(Self {
            me: NodeId(f.me),
            transport: f.transport,
            spin: Duration::from_micros(f.spin_us),
            core: f.core,
            start_timeout: Duration::from_millis(f.start_timeout_ms),
            shm_namespace: f.shm_namespace,
            limits,
            members: f.members,
            view,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
me = 1
[[members]]
id = 0
address = "127.0.0.1:7000"
[[members]]
id = 1
address = "127.0.0.1:7001"
"#;

    fn load(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<GroupConfig, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        GroupConfig::from_toml(text, env, &sets)
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = load(BASE, &[], &[]).unwrap();
        assert_eq!(c.me, NodeId(1));
        assert_eq!(c.transport, TransportKind::Tcp);
        assert_eq!(c.spin, Duration::ZERO);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.view.shards.len(), 1);
        assert_eq!(c.view.shards[0].senders, vec![NodeId(0), NodeId(1)]);
    }

    #[test]
    fn environment_then_command_line_override() {
        let c = load(
            BASE,
            &[("DERECHO_SPIN_US", "40"), ("DERECHO_TRANSPORT", "shm"), ("HOME", "/x")],
            &["spin_us=7", "limits.window_len=64"],
        )
        .unwrap();
        assert_eq!(c.transport, TransportKind::Shm);
        assert_eq!(c.spin, Duration::from_micros(7));
        assert_eq!(c.limits.window_len, 64);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let cases: &[(&str, &[&str], &str)] = &[
            (BASE, &["colour=1"], "colour"),
            (BASE, &["limits.windw_len=3"], "windw_len"),
            (BASE, &["limits.window_len=0"], "limits.window_len"),
            (BASE, &["transport=udp"], "udp"),
            (BASE, &["me=5"], "me"),
            (BASE, &["spin_us=fast"], "spin_us"),
            (BASE, &["nonsense"], "nonsense"),
        ];
        for (text, sets, needle) in cases {
            let e = load(text, &[], sets).expect_err(needle).to_string();
            assert!(e.contains(needle), "{sets:?}: {e}");
        }
        let no_addr = "me = 0\ntransport = \"tcp\"\n[[members]]\nid = 0\n";
        assert!(load(no_addr, &[], &[]).unwrap_err().to_string().contains("members.address"));
        let shards = format!("{BASE}\n[[shards]]\nmembers = [0, 1]\nmode = \"sideways\"\n");
        assert!(load(&shards, &[], &[]).unwrap_err().to_string().contains("shards[0].mode"));
    }

    #[test]
    fn placement_and_group_tag() {
        let c = load(BASE, &[], &["core=1", "spin_us=30"]).unwrap();
        assert_eq!(c.core, Some(1));
        assert_eq!(c.address_of(NodeId(0)), Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.address_of(NodeId(9)), None);
        // Every member computes the same tag; another layout gives another.
        assert_eq!(c.group_tag(), load(BASE, &[], &["me=0"]).unwrap().group_tag());
        assert_ne!(c.group_tag(), load(BASE, &[], &["limits.window_len=8"]).unwrap().group_tag());
        assert!(load(BASE, &[], &["core=5000"]).unwrap_err().to_string().contains("core"));
    }

    #[test]
    fn shards_from_the_file() {
        let text = format!("{BASE}\n[[shards]]\nmembers = [0, 1]\nsenders = [1]\nmode = \"unordered\"\n");
        let c = load(&text, &[], &[]).unwrap();
        assert_eq!(c.view.shards[0].senders, vec![NodeId(1)]);
        assert_eq!(c.view.shards[0].mode, DeliveryMode::Unordered);
    }
}
