//! A static group's configuration file (TOML), with environment and command-line overrides.
//!
//! ```toml
//! me = 0                      # this member's id (required)
//! transport = "tcp"           # "tcp" or "shm"; default "tcp"
//! spin_us = 50                # executor spin budget before parking, µs; default 0
//! core = 1                    # pin this member's executor to this core; default unpinned
//! start_timeout_ms = 30000    # start-up barrier and connection timeout; default 30000
//! shm_namespace = "derecho"   # names the /dev/shm files of a shm group; default "derecho"
//! insecure = false            # tcp: true runs plaintext on purpose; tcp requires this or [tls]
//!
//! [tls]                       # tcp: mutual TLS between the members: dir, or ca, cert and key
//! # dir = "tls"               # holds ca.pem, node-ME.pem and node-ME.key (ME: `me`)
//! ca = "ca.pem"               # the authority every member's certificate must chain to (PEM)
//! cert = "node-0.pem"         # this member's chain (PEM), naming it node-0.derecho
//! key = "node-0.key"          # its private key (PEM)
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
//! Overrides, applied in this order after the file: environment variables
//! `DERECHO_CFG__<KEY>` (the key path in capitals with `__` between levels, e.g.
//! `DERECHO_CFG__ME=2`, `DERECHO_CFG__LIMITS__WINDOW_LEN=64`; no other variable is read) and
//! command-line `--set key=value` (any key path, e.g. `--set limits.window_len=64`). Values are
//! TOML (`tcp` may be given without quotes). Unknown keys and invalid values are errors that name
//! the key and where its value came from (the file and line, the variable, or the `--set`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{DeliveryMode, Limits, NodeId, ShardIndex, ShardLayout, ShardRef, SubgroupId, View, ViewId};

/// Which transport the group runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportKind {
    /// TCP via io_uring.
    Tcp,
    /// Shared memory between processes of one host.
    Shm,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "TCP",
            TransportKind::Shm => "shared memory",
        })
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id.
    pub id: u32,
    /// TCP listen address (required for TCP groups); a host name is resolved when the file is
    /// read.
    #[serde(default, deserialize_with = "de_address_opt")]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    dir: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The `[tls]` table: the files, and the identity read from them.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The authority's certificates.
    pub ca: PathBuf,
    /// This member's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// What was read from them.
    pub identity: derecho_runtime::tls::TlsIdentity,
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        (&self.ca, &self.cert, &self.key) == (&other.ca, &other.cert, &other.key)
    }
}

impl Eq for TlsSettings {}

/// The `[tls]` table read (its files for member `me`), or plaintext if `insecure` says so; one of
/// the two is required.
pub(super) fn tls_or_insecure(
    tls: Option<TlsFile>,
    insecure: bool,
    me: u32,
) -> Result<Option<TlsSettings>, ConfigError> {
    let t = match (tls, insecure) {
        (Some(_), true) => return Err(invalid("insecure", "true, but [tls] is given: choose one")),
        (None, false) => {
            return Err(invalid(
                "tls",
                "missing: give [tls] (dir, or ca, cert and key) for mutual TLS, or insecure = true to run plaintext \
                 on purpose",
            ));
        }
        (None, true) => return Ok(None),
        (Some(t), false) => t,
    };
    let (ca, cert, key) = match (t.dir, t.ca, t.cert, t.key) {
        (Some(d), None, None, None) => {
            (d.join("ca.pem"), d.join(format!("node-{me}.pem")), d.join(format!("node-{me}.key")))
        }
        (None, Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        _ => return Err(invalid("tls", "give either dir, or all three of ca, cert and key")),
    };
    let identity = derecho_runtime::tls::TlsIdentity::from_pem_files(&ca, &cert, &key)
        .map_err(|e| invalid("tls", e.to_string()))?;
    Ok(Some(TlsSettings { ca, cert, key, identity }))
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
    insecure: bool,
    tls: Option<TlsFile>,
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
    /// Mutual TLS between the members (TCP). `None` over shared memory, or with `insecure`.
    pub tls: Option<TlsSettings>,
    /// Plaintext TCP on purpose (`insecure = true`).
    pub insecure: bool,
    /// Limits.
    pub limits: Limits,
    /// Members with their addresses, in rank order.
    pub members: Vec<MemberConfig>,
    /// The view (id 0) with its shard layout.
    pub view: View,
}

/// Where a configuration value came from: errors say it, so a value set far from the file (an
/// environment variable in a service unit, a `--set` in a script) is found at once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The configuration file (or text), at this line if known.
    File {
        /// The file's path; `None` for text given directly.
        path: Option<String>,
        /// The line of the key, from 1.
        line: Option<usize>,
    },
    /// An environment variable ([`ENV_PREFIX`]...).
    Env(String),
    /// A command-line `--set key=value`.
    Set(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line } => {
                match path {
                    Some(p) => write!(f, "in {p}")?,
                    None => write!(f, "in the configuration text")?,
                }
                match line {
                    Some(l) => write!(f, " line {l}"),
                    None => Ok(()),
                }
            }
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::Set(s) => write!(f, "from --set {s}"),
        }
    }
}

/// Environment variables that override configuration keys start with this; the rest of the name
/// is the key path, `__` between levels: `DERECHO_CFG__SPIN_US=0`,
/// `DERECHO_CFG__MEMBERSHIP__HEARTBEAT_MS=5`. Other variables (`DERECHO_LOG_FORMAT`, anything)
/// are never read as configuration.
pub const ENV_PREFIX: &str = "DERECHO_CFG__";

/// A configuration error; the message names the key, and where it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// An error of a value with a known origin.
    #[error("{error} ({origin})")]
    At {
        /// What is wrong.
        error: Box<ConfigError>,
        /// Where the value came from.
        origin: Origin,
    },
}

impl ConfigError {
    /// This error, with where its value came from.
    fn at(self, origin: Origin) -> ConfigError {
        ConfigError::At { error: Box::new(self), origin }
    }

    /// The error without its origin.
    pub fn without_origin(&self) -> &ConfigError {
        match self {
            ConfigError::At { error, .. } => error.without_origin(),
            e => e,
        }
    }

    /// Where the value at fault came from, if known.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::At { origin, .. } => Some(origin),
            _ => None,
        }
    }
}

/// The sources of a configuration, kept to say where a key's value came from.
pub(super) struct Sources<'a> {
    text: &'a str,
    path: Option<String>,
    /// Overridden key paths, in the order applied (a later one wins).
    overrides: Vec<(String, Origin)>,
}

impl Sources<'_> {
    /// Where `key` (a path like `membership.heartbeat_ms` or `members[2].address`) came from.
    fn origin_of(&self, key: &str) -> Origin {
        let plain = strip_indices(key);
        let overridden =
            self.overrides.iter().rev().find(|(k, _)| {
                plain == *k || plain.starts_with(&format!("{k}.")) || k.starts_with(&format!("{plain}."))
            });
        match overridden {
            Some((_, o)) => o.clone(),
            None => Origin::File { path: self.path.clone(), line: line_of(self.text, key) },
        }
    }

    /// `e`, with the origin of the key it names.
    pub(super) fn locate(&self, e: ConfigError) -> ConfigError {
        match &e {
            ConfigError::Invalid { key, .. } => {
                let origin = self.origin_of(key);
                e.at(origin)
            }
            _ => e,
        }
    }
}

/// `a[1].b[0].c` → `a.b.c`.
fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The line (from 1) of `key` in TOML `text`, or of the nearest enclosing table or entry there
/// (a key that is missing is reported where it belongs).
fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut at = None;
    let parts: Vec<&str> = key.split('.').filter(|p| !p.is_empty()).collect();
    for (n, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else { break };
        at = Some(k.span().start);
        let mut value = v.get_ref();
        if let (Some(i), DeValue::Array(items)) = (index, value) {
            let Some(item) = items.get(i) else { break };
            at = Some(item.span().start);
            value = item.get_ref();
        }
        match value {
            DeValue::Table(t) => table = t,
            _ if n + 1 == parts.len() => {}
            _ => break,
        }
    }
    at.map(|pos| line_at(text, pos))
}

/// The line (from 1) of byte `pos` of `text`.
fn line_at(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// The key path at byte `pos` of TOML `text` (the innermost key or array element whose value
/// holds it): `members[1].address`.
fn key_at(text: &str, pos: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    // Depth first: tables (also those of an array of tables, whose spans need not cover their
    // keys) are searched whatever their own span; a scalar or inline value matches by its span.
    fn walk(table: &DeTable<'_>, pos: usize, prefix: &str) -> Option<String> {
        for (k, v) in table {
            let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
            let here = k.span().contains(&pos) || v.span().contains(&pos);
            match v.get_ref() {
                DeValue::Table(t) => {
                    if let Some(p) = walk(t, pos, &path) {
                        return Some(p);
                    }
                }
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{path}[{i}]");
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(p) = walk(t, pos, &at) {
                                    return Some(p);
                                }
                            }
                            _ if item.span().contains(&pos) => return Some(at),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            if here {
                return Some(path);
            }
        }
        None
    }
    walk(DeTable::parse(text).ok()?.get_ref(), pos, "")
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

/// Parses `text` (from `path`, for messages), applies the [`ENV_PREFIX`] environment variables
/// and the `--set` overrides, and deserializes the result (unknown keys and wrong types are
/// errors naming the key). Returns the sources too, for errors found later.
pub(super) fn overlay<'a, T: serde::de::DeserializeOwned>(
    text: &'a str,
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<(T, Sources<'a>), ConfigError> {
    let path = path.map(|p| p.display().to_string());
    let file = |line| Origin::File { path: path.clone(), line };
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| line_at(text, s.start));
        ConfigError::Parse(e.message().trim().to_string()).at(file(line))
    })?;
    // Environment variables (sorted, so the order is the same every time), then `--set`s.
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env.sort();
    let env = env
        .into_iter()
        .map(|(var, v)| Ok((var[ENV_PREFIX.len()..].to_ascii_lowercase().replace("__", "."), v, Origin::Env(var))));
    let sets = sets.iter().map(|s| {
        let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Override(s.clone()))?;
        Ok((k.trim().to_string(), v.trim().to_string(), Origin::Set(s.clone())))
    });
    let mut overrides = Vec::new();
    for o in env.chain(sets) {
        let (key, value, origin) = o?;
        set_path(&mut table, &key, parse_value(&value)).map_err(|e| e.at(origin.clone()))?;
        overrides.push((key, origin));
    }
    let sources = Sources { text, path: path.clone(), overrides };
    // Deserialized from the merged document's text, so that an error has a place: the key at
    // that place says which source gave the value.
    let merged = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
    match toml::from_str::<T>(&merged) {
        Ok(v) => Ok((v, sources)),
        Err(e) => {
            let key = e.span().and_then(|s| key_at(&merged, s.start)).filter(|k| !k.is_empty());
            let message = e.message().trim().to_string();
            Err(match key {
                Some(key) => {
                    let origin = sources.origin_of(&key);
                    ConfigError::Invalid { key, reason: message }.at(origin)
                }
                None => ConfigError::Parse(message).at(file(None)),
            })
        }
    }
}

/// An address from the configuration: `IP:port`, or `host:port` resolved now (the first
/// address, IPv4 preferred).
///
/// # Errors
///
/// What is wrong with it, for the key's message.
pub fn resolve_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    if !text.contains(':') {
        return Err(format!("{text:?} is not HOST:PORT or IP:PORT"));
    }
    let all: Vec<SocketAddr> = text.to_socket_addrs().map_err(|e| format!("{text:?} does not resolve: {e}"))?.collect();
    all.iter().find(|a| a.is_ipv4()).or(all.first()).copied().ok_or_else(|| format!("{text:?} resolves to no address"))
}

pub(super) fn de_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_address(&text).map_err(serde::de::Error::custom)
}

pub(super) fn de_address_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    resolve_address(&text).map(Some).map_err(serde::de::Error::custom)
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
        // FNV-1a over a canonical encoding (never `Debug` text, which may change between
        // toolchains): deterministic across processes, builds and compilers.
        let mut h = crate::hash::Fnv32::new();
        let ids = |h: &mut crate::hash::Fnv32, ids: &[NodeId]| {
            h.write(&(ids.len() as u32).to_le_bytes());
            for n in ids {
                h.write(&n.0.to_le_bytes());
            }
        };
        h.write(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            h.write(&m.id.to_le_bytes());
            let address = m.address.map(|a| a.to_string()).unwrap_or_default();
            h.write(&(address.len() as u32).to_le_bytes()).write(address.as_bytes());
        }
        h.write(&(self.view.shards.len() as u32).to_le_bytes());
        for s in &self.view.shards {
            h.write(&s.id.subgroup.0.to_le_bytes()).write(&s.id.shard.0.to_le_bytes());
            ids(&mut h, &s.members);
            ids(&mut h, &s.senders);
            h.write(&[matches!(s.mode, DeliveryMode::Ordered) as u8]);
        }
        let l = &self.limits;
        for v in [l.window_len, l.payload_len_max, l.ring_len, l.members_max, l.shards_max, l.changes_max] {
            h.write(&v.to_le_bytes());
        }
        h.write(&[matches!(self.transport, TransportKind::Shm) as u8]);
        h.finish()
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
        let text = read(path)?;
        let (file, sources) = overlay(&text, Some(path), env, sets)?;
        Self::validate(file).map_err(|e| sources.locate(e))
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
        let (file, sources) = overlay(text, None, env, sets)?;
        Self::validate(file).map_err(|e| sources.locate(e))
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
            let i = f.members.iter().position(|x| x.id == m.id).unwrap_or(0);
            return Err(invalid(
                format!("members[{i}].address"),
                format!("member {} has no address (required for tcp)", m.id),
            ));
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
        let tls = match f.transport {
            TransportKind::Tcp => tls_or_insecure(f.tls, f.insecure, f.me)?,
            TransportKind::Shm if f.tls.is_some() => {
                return Err(invalid("tls", "a group over shared memory makes no TCP connection: omit [tls]"));
            }
            TransportKind::Shm => None,
        };
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
            tls,
            insecure: f.insecure,
            limits,
            members: f.members,
            view,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"insecure = true
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
            &[
                ("DERECHO_CFG__SPIN_US", "40"),
                ("DERECHO_CFG__TRANSPORT", "shm"),
                ("HOME", "/x"),
                // Not configuration: other derecho variables and C++ Derecho's are left alone.
                ("DERECHO_LOG_FORMAT", "json"),
                ("DERECHO_CONF_FILE", "/etc/derecho.cfg"),
                ("DERECHO_SPIN_US", "999"),
            ],
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
        assert!(load(no_addr, &[], &[]).unwrap_err().to_string().contains("members[0].address"));
        let shards = format!("{BASE}\n[[shards]]\nmembers = [0, 1]\nmode = \"sideways\"\n");
        // TCP without TLS and without insecure: refused, saying what to give.
        let e = load(BASE, &[], &["insecure=false"]).unwrap_err().to_string();
        assert!(e.contains("tls") && e.contains("insecure = true"), "{e}");
        assert!(load(BASE, &[], &["insecure=false", "transport=shm"]).is_ok(), "shm needs neither");
        assert!(load(&shards, &[], &[]).unwrap_err().to_string().contains("shards[0].mode"));
    }

    #[test]
    fn errors_say_where_the_value_came_from() {
        let path = Path::new("/etc/derecho/static.toml");
        let e = |text: &str, env: &[(&str, &str)], sets: &[&str]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let (file, sources) = match overlay::<FileConfig>(text, Some(path), env, &sets) {
                Ok(x) => x,
                Err(e) => return e.to_string(),
            };
            GroupConfig::validate(file).map_err(|e| sources.locate(e)).expect_err("an error").to_string()
        };
        // From the environment, nested with `__`.
        let m = e(BASE, &[("DERECHO_CFG__LIMITS__WINDOW_LEN", "0")], &[]);
        assert!(
            m.contains("limits.window_len") && m.contains("environment variable DERECHO_CFG__LIMITS__WINDOW_LEN"),
            "{m}"
        );
        let m = e(BASE, &[("DERECHO_CFG__CONF_FILE", "x")], &[]);
        assert!(m.contains("conf_file") && m.contains("DERECHO_CFG__CONF_FILE"), "{m}");
        // From the command line.
        let m = e(BASE, &[], &["spin_us=fast"]);
        assert!(m.contains("spin_us") && m.contains("--set spin_us=fast"), "{m}");
        // From the file: its path, the line, and which entry of a list.
        let bad = BASE.replace("127.0.0.1:7001", "nowhere");
        let m = e(&bad, &[], &[]);
        assert!(m.contains("members[1].address") && m.contains("/etc/derecho/static.toml line 8"), "{m}");
        let m = e(&format!("{BASE}colour = 3\n"), &[], &[]);
        assert!(m.contains("colour") && m.contains("static.toml line 9"), "{m}");
        let no_addr = "me = 0\n[[members]]\nid = 0\n[[members]]\nid = 1\naddress = \"127.0.0.1:1\"\n";
        let m = e(no_addr, &[], &["me=1"]);
        assert!(m.contains("members[0].address") && m.contains("line 2"), "{m}");
        // Malformed TOML: the file and line.
        let m = e("me = 1\nmembers = [\n", &[], &[]);
        assert!(m.contains("static.toml line"), "{m}");
        // A host name resolves; one that does not is an error naming the key.
        let c = load(&BASE.replace("127.0.0.1:7001", "localhost:7001"), &[], &[]).unwrap();
        assert_eq!(c.address_of(NodeId(1)).map(|a| a.port()), Some(7001));
        assert!(c.address_of(NodeId(1)).is_some_and(|a| a.ip().is_loopback()));
        let m = e(&BASE.replace("127.0.0.1:7001", "no-such-host.invalid:7001"), &[], &[]);
        assert!(m.contains("members[1].address") && m.contains("does not resolve"), "{m}");
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
