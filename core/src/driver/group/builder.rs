//! [`GroupBuilder`]: a member's settings, its listener, and the transport of each view.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho_runtime::net::TcpListener;
use derecho_runtime::time;
use derecho_runtime::tls::TlsIdentity;
use derecho_runtime::transport::region::Region;
use derecho_runtime::transport::shm::{ShmConfig, ShmTransport};
use derecho_runtime::transport::tcp::{TcpAcceptor, TcpConfig, TcpTransport};
use derecho_runtime::transport::{AnyTransport, PeerId, Transport, TransportError, TransportLimits};

use super::app::{Application, JoinError, PARTITION_SAFETY_NEEDED};
use super::{FRAME_LEN_MAX, Group};
use crate::driver::config::TransportKind;
use crate::driver::{GroupError, RegionMemory, TABLE_REGION};
use crate::protocol::member::{Member, MemberConfig};
use crate::protocol::restart::Offer;
use crate::protocol::{LayoutFn, Limits, MembershipConfig, Node, NodeId, OneShard, RowLayout, View, ViewId};

/// The longest control message (a welcome carries the view and every address).
pub(super) const MESSAGE_LEN_MAX: usize = 1 << 20;
/// Connections parked at once, for views not reached yet and control messages.
pub(super) const PARK_MAX: usize = 256;

/// Settings and application of a member; [`GroupBuilder::start`] starts a group,
/// [`GroupBuilder::join`] joins one, [`GroupBuilder::restart`] restarts one from its logs.
pub struct GroupBuilder {
    me: NodeId,
    listen: SocketAddr,
    listener: Option<TcpListener>,
    advertise: Option<String>,
    name: String,
    limits: Limits,
    membership: MembershipConfig,
    layout: Rc<dyn LayoutFn>,
    connect_timeout: Duration,
    join_timeout: Duration,
    restart_timeout: Duration,
    metrics_listen: Option<SocketAddr>,
    state_len_max: usize,
    transport: TransportKind,
    shm_dir: std::path::PathBuf,
    clients: super::ClientLimits,
    allowed: Option<Rc<[NodeId]>>,
    tls: Option<TlsIdentity>,
    insecure: bool,
}

impl std::fmt::Debug for GroupBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupBuilder").field("me", &self.me).field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl GroupBuilder {
    /// Member `me`, listening on `listen` (port 0 picks one). Defaults: group name "derecho",
    /// default limits and membership settings, one ordered shard of every member adequate from
    /// one member, a 2 s connect timeout per view, a 30 s join timeout, a 5 minute restart
    /// timeout, states up to 64 MiB.
    pub fn new(me: NodeId, listen: SocketAddr) -> Self {
        Self {
            me,
            listen,
            listener: None,
            advertise: None,
            name: "derecho".into(),
            limits: Limits::default(),
            membership: MembershipConfig::default(),
            layout: Rc::new(OneShard { mode: crate::protocol::DeliveryMode::Ordered, min_members: 1 }),
            connect_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(30),
            restart_timeout: Duration::from_secs(300),
            metrics_listen: None,
            state_len_max: 64 << 20,
            transport: TransportKind::Tcp,
            shm_dir: std::path::PathBuf::from("/dev/shm"),
            clients: super::ClientLimits::default(),
            allowed: None,
            tls: None,
            insecure: false,
        }
    }

    /// Mutual TLS on every TCP connection this member accepts or makes: view transports, joins
    /// and control messages, external clients. Peers must present a certificate `identity`'s
    /// authority issued; a member's must name its node id (`node-N.derecho`,
    /// [`derecho_runtime::tls::node_name`]), checked against the id it claims. Every member of
    /// the group must use TLS with the same authority.
    /// Replaces an earlier [`GroupBuilder::insecure`].
    pub fn tls(mut self, identity: TlsIdentity) -> Self {
        self.tls = Some(identity);
        self.insecure = false;
        self
    }

    /// Runs without TLS on purpose: anyone who reaches the port can join and call, and a
    /// warning at start says so. A member needs either this or [`GroupBuilder::tls`]: without
    /// both, starting fails. Replaces an earlier [`GroupBuilder::tls`].
    pub fn insecure(mut self) -> Self {
        self.tls = None;
        self.insecure = true;
        self
    }

    /// Only these node ids may join the group or come back to it with their logs, when this
    /// member admits joiners (as leader); others are refused with
    /// [`JoinRefusal::NotAllowed`](crate::protocol::JoinRefusal::NotAllowed). Default: any id.
    /// Every member should give the same list (any of them may lead).
    pub fn allow_only(mut self, ids: impl IntoIterator<Item = NodeId>) -> Self {
        let mut ids: Vec<NodeId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        self.allowed = Some(ids.into());
        self
    }

    /// The transport of each view (every member must use the same): TCP (the default), or
    /// shared memory among processes of this host. Over shared memory joins and external
    /// clients still reach members through their TCP listener, and the group's name must be
    /// 1 to 48 letters, digits, `_`, `.` or `-`, unique among the groups sharing
    /// [`GroupBuilder::shm_dir`]. Each ring between two members is sized for the largest frame,
    /// [`FRAME_LEN_MAX`], twice (about 16 MiB per pair of members and view, touched as it is
    /// used; states travel in pieces).
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = kind;
        self
    }

    /// Where shared-memory views keep their files (default `/dev/shm`).
    pub fn shm_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.shm_dir = dir.into();
        self
    }

    /// How the member bounds its external clients' sessions.
    pub fn client_limits(mut self, limits: super::ClientLimits) -> Self {
        self.clients = limits;
        self
    }

    /// A listener already bound (its address replaces `listen`).
    pub fn listener(mut self, l: TcpListener) -> Self {
        self.listen = l.local_addr();
        self.listener = Some(l);
        self
    }

    /// The address peers reach this member at, if not the listen address (at most 56 bytes).
    pub fn advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// The group's name: members of differently named groups never connect.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Table limits (every member must use the same).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Heartbeat, suspicion timeout, partition safety, state-transfer timeout.
    pub fn membership(mut self, m: MembershipConfig) -> Self {
        self.membership = m;
        self
    }

    /// The membership configuration set.
    pub fn membership_config(&self) -> &MembershipConfig {
        &self.membership
    }

    /// The shard layout of every view (every member must use the same).
    pub fn layout(mut self, layout: impl LayoutFn + 'static) -> Self {
        self.layout = Rc::new(layout);
        self
    }

    /// How long a view's transport waits for a peer before reporting it failed.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long [`GroupBuilder::join`] waits for its welcome.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }

    /// Serves this member's [`Metrics`](super::Metrics) in the Prometheus text format at
    /// `address` (`GET /metrics`), from the moment it starts, joins or restarts
    /// ([`Group::serve_metrics`]).
    pub fn metrics_listen(mut self, address: SocketAddr) -> Self {
        self.metrics_listen = Some(address);
        self
    }

    /// How long [`GroupBuilder::restart`] waits: the restart leader for a quorum, the others
    /// for their welcome (default 5 minutes: members of a stopped group come back one by one).
    /// It says what it waits for meanwhile (`tracing`, info; [`Metrics::waiting`](super::Metrics::waiting)).
    pub fn restart_timeout(mut self, d: Duration) -> Self {
        self.restart_timeout = d;
        self
    }

    /// The largest shard state accepted or sent (at most 4 GiB less 64 bytes, a frame's limit).
    pub fn state_len_max(mut self, len: usize) -> Self {
        self.state_len_max = len.min(u32::MAX as usize - 64);
        self
    }

    /// Starts a new group of this member alone (PROTOCOLS §3.5 bootstrap); others join it with
    /// this member's address as contact. It delivers nothing until a view is adequate (see
    /// [`Group::wait_view`]). Must run inside an executor.
    ///
    /// # Errors
    ///
    /// [`GroupError`]: invalid settings, the address cannot be bound, the first view's
    /// transport cannot be set up.
    pub async fn start(self, app: impl Application) -> Result<Group, GroupError> {
        self.launch(Box::new(app), false, |m, _| m.start()).await.map_err(|e| match e {
            JoinError::Start(e) => e,
            JoinError::Config(what) => GroupError::Config(what),
            other => GroupError::Transport(TransportError::Config(other.to_string())),
        })
    }

    /// Joins the group that the member at `contact` belongs to (redirected to its leader), and
    /// returns once admitted, in the view that adds this member, with the state of every shard
    /// it joins restored (the application's [`Application::restore`]). Must run inside an
    /// executor.
    ///
    /// # Errors
    ///
    /// [`JoinError`]: refused (an id in use, a full group), another handshake version, no
    /// welcome within the join timeout, no state within the state-transfer timeout, or a
    /// transport error.
    pub async fn join(self, contact: SocketAddr, app: impl Application) -> Result<Group, JoinError> {
        let contact = contact.to_string();
        self.launch(Box::new(app), false, move |m, now| m.join(now, contact)).await
    }

    /// Restarts a group from its members' logs (PROTOCOLS §4.1): `offer` is this member's
    /// last saved view and the last version of each shard's log here, `addresses` the saved
    /// view's members' addresses.
    ///
    /// Without a `contact`, this member first looks for a running group among the members of
    /// its saved view and joins it if one answers; otherwise it is the restart leader: it
    /// collects the offers of the members that come back, and once a majority of the last
    /// view and a member of each of its shards are there
    /// ([`crate::protocol::restart::plan`]) it installs the restart view: those members, each
    /// shard starting from its longest log, sent to the members whose log is shorter. With a
    /// `contact` (the restart leader, or any member of a group already running again), this
    /// member offers itself and enters the view it is welcomed to, as a joiner does. While it
    /// waits it says what for (`tracing`, info level).
    ///
    /// # Errors
    ///
    /// [`JoinError::NoQuorum`] when the leader's quorum is not met within the restart timeout;
    /// otherwise as [`GroupBuilder::join`].
    pub async fn restart(
        self,
        offer: Offer,
        addresses: Vec<(NodeId, String)>,
        contact: Option<SocketAddr>,
        app: impl Application,
    ) -> Result<Group, JoinError> {
        let contact = contact.map(|c| c.to_string());
        self.launch(Box::new(app), true, move |m, now| m.restart(now, offer, addresses, contact)).await
    }

    /// Binds the listener, creates the member, runs it and waits until it is in its first
    /// view with every state it awaited restored. A persisting application, or a restart, needs
    /// partition safety: a total restart finds every view that may have been committed
    /// through a majority of the view before it, and without partition safety a minority may
    /// commit one.
    async fn launch(
        mut self,
        app: Box<dyn Application>,
        restart: bool,
        begin: impl FnOnce(&mut Member<RegionMemory>, crate::protocol::Time),
    ) -> Result<Group, JoinError> {
        self.membership.validate().map_err(|e| GroupError::Node(e.into()))?;
        if (app.persistent() || restart) && !self.membership.partition_safety {
            return Err(JoinError::Config(PARTITION_SAFETY_NEEDED));
        }
        if self.tls.is_none() && !self.insecure {
            return Err(JoinError::Config(NO_TLS));
        }
        let (acceptor, advertise) = self.acceptor().await?;
        let settings = Settings::from(&self);
        let config = MemberConfig {
            me: self.me,
            address: advertise,
            limits: self.limits.clone(),
            membership: self.membership.clone(),
            layout: self.layout.clone(),
            state_len_max: self.state_len_max,
            join_timeout_ns: self.join_timeout.as_nanos() as u64,
            restart_timeout_ns: self.restart_timeout.as_nanos() as u64,
            retry_ns: 2_000_000_000,
            connect_timeout_ns: self.connect_timeout.as_nanos() as u64,
            persistent: app.persistent(),
            app: app.fingerprint(),
            allowed: self.allowed.clone(),
        };
        let group = Group::run(settings, acceptor, Member::new(config), app, begin);
        // Served from the start: a member joining or restarting shows what it waits for.
        if let Some(address) = self.metrics_listen {
            group.serve_metrics(address).map_err(GroupError::Metrics)?;
        }
        group.entered().await?;
        Ok(group)
    }

    async fn acceptor(&mut self) -> Result<(TcpAcceptor, String), GroupError> {
        let listener = match self.listener.take() {
            Some(l) => l,
            None => self.bind().await?,
        };
        let advertise = self.advertise.clone().unwrap_or_else(|| listener.local_addr().to_string());
        if advertise.parse::<SocketAddr>().is_err() || advertise.len() > crate::protocol::ADDRESS_LEN_MAX {
            return Err(GroupError::Transport(TransportError::Config(format!(
                "advertise: {advertise:?} is not an IP address and port of at most {} bytes",
                crate::protocol::ADDRESS_LEN_MAX
            ))));
        }
        let limits = TransportLimits { max_frame_len: MESSAGE_LEN_MAX, ..TransportLimits::default() };
        let acceptor = TcpAcceptor::new(listener, PeerId(self.me.0), &limits, PARK_MAX, self.connect_timeout * 4);
        match &self.tls {
            Some(id) => {
                acceptor.require_tls(id.clone());
                tracing::info!(name = id.name(), "mutual TLS on every connection");
            }
            // `launch` checked that plaintext is meant.
            None => tracing::warn!(
                "insecure: plaintext connections, nothing authenticated (whoever reaches {advertise} can join and call)"
            ),
        }
        acceptor.accept_messages(control_tag(&self.name), MESSAGE_LEN_MAX);
        acceptor.accept_sessions(derecho_wire::session_tag(&self.name));
        Ok((acceptor, advertise))
    }

    /// Binds the listening address. A member restarted right after it died may find its
    /// address still taken for a moment: the kernel releases the listener of a killed process
    /// only once its io_uring (holding a pending accept) is torn down, asynchronously. So an
    /// address in use is tried again for up to the connect timeout.
    async fn bind(&self) -> Result<TcpListener, GroupError> {
        let deadline = Instant::now() + self.connect_timeout;
        loop {
            match TcpListener::bind(self.listen) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tracing::debug!(listen = %self.listen, "the address is in use; trying again");
                    time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    return Err(GroupError::Transport(TransportError::Config(format!(
                        "cannot listen on {}: {e}",
                        self.listen
                    ))));
                }
            }
        }
    }
}

/// The group tag of the control messages of group `name` (joins, restart offers, external
/// clients).
pub(crate) fn control_tag(name: &str) -> u32 {
    derecho_wire::control_tag(name)
}

/// The group tag of view `view`'s transport.
/// Why a member configured with neither TLS nor `insecure` does not start.
const NO_TLS: &str = "neither TLS nor insecure is configured: give the authority, certificate and key \
     (GroupBuilder::tls, or [tls] ca, cert and key), or say insecure (GroupBuilder::insecure, insecure = true) to run \
     plaintext on purpose";

fn view_tag(name: &str, view: ViewId) -> u32 {
    derecho_wire::tag(name, u64::from(view.0))
}

/// What the running group keeps of the builder.
pub(super) struct Settings {
    pub(super) me: NodeId,
    pub(super) name: String,
    pub(super) limits: Limits,
    pub(super) membership: MembershipConfig,
    pub(super) connect_timeout: Duration,
    transport: TransportKind,
    shm_dir: std::path::PathBuf,
    pub(super) clients: super::ClientLimits,
    pub(super) tls: Option<TlsIdentity>,
}

impl From<&GroupBuilder> for Settings {
    fn from(b: &GroupBuilder) -> Self {
        Self {
            me: b.me,
            name: b.name.clone(),
            limits: b.limits.clone(),
            membership: b.membership.clone(),
            connect_timeout: b.connect_timeout,
            transport: b.transport,
            shm_dir: b.shm_dir.clone(),
            clients: b.clients.clone(),
            tls: b.tls.clone(),
        }
    }
}

impl Settings {
    /// The shared-memory namespace of view `view`.
    fn shm_namespace(&self, view: ViewId) -> String {
        format!("{}-v{}", self.name, view.0)
    }

    /// The transport of `view` and its table region: peers missing after the connect timeout
    /// are reported failed. A peer's pushes may write only its own row (PROTOCOLS §7).
    pub(super) async fn connect(
        &self,
        acceptor: &TcpAcceptor,
        view: &View,
        addresses: &[(NodeId, String)],
    ) -> Result<(Rc<AnyTransport>, Rc<Region>), GroupError> {
        let table_len = Node::<RegionMemory>::table_len(view, &self.limits);
        let layout = RowLayout::new(view, &self.limits);
        let row_len = layout.row_len;
        let heartbeat = self.membership.heartbeat;
        let max_frame_len = row_len.max(FRAME_LEN_MAX);
        let limits = TransportLimits {
            max_frame_len,
            heartbeat_interval: heartbeat,
            peer_timeout: self.membership.suspect_after.max(heartbeat.saturating_mul(2)),
            connect_timeout: self.connect_timeout,
            send_queue_len_max: (64 << 20usize).max(4 * row_len).max(max_frame_len),
        };
        let (transport, region) = if self.transport == TransportKind::Shm {
            if self.name.len() > 48 {
                return Err(TransportError::Config(format!(
                    "name: a group over shared memory needs a name of at most 48 bytes, not {:?}",
                    self.name
                ))
                .into());
            }
            let peers = view.members.iter().filter(|&&m| m != self.me).map(|m| PeerId(m.0)).collect();
            let mut config = ShmConfig::new(PeerId(self.me.0), peers, self.shm_namespace(view.id));
            config.dir = self.shm_dir.clone();
            config.ring_len = ShmConfig::ring_len_for(max_frame_len, 16 << 20);
            config.limits = limits;
            config.regions = vec![(TABLE_REGION, table_len)];
            let t = ShmTransport::connect_allowing_missing(config).await?;
            let region = t.region(TABLE_REGION).ok_or(TransportError::UnknownRegion(TABLE_REGION))?;
            (Rc::new(AnyTransport::Shm(t)), region)
        } else {
            let mut peers = Vec::new();
            for &m in view.members.iter().filter(|&&m| m != self.me) {
                let a = addresses.iter().find(|(n, _)| *n == m).map(|(_, a)| a.as_str()).unwrap_or("");
                match a.parse::<SocketAddr>() {
                    Ok(a) => peers.push((PeerId(m.0), a)),
                    // Reported failed by the transport, like a peer that never connects.
                    Err(_) => tracing::warn!(member = %m, address = a, "a member's address does not parse"),
                }
            }
            let mut config = TcpConfig::new(PeerId(self.me.0), peers);
            config.group_tag = view_tag(&self.name, view.id);
            config.limits = limits;
            config.tls = self.tls.clone();
            let t = TcpTransport::connect_via(acceptor, config, true).await?;
            let region = t.register_region(TABLE_REGION, table_len)?;
            (Rc::new(AnyTransport::Tcp(t)), region)
        };
        for (rank, &m) in view.members.iter().enumerate() {
            if m != self.me {
                let start = layout.row(rank);
                transport.confine_pushes(TABLE_REGION, PeerId(m.0), start..start + row_len);
            }
        }
        Ok((transport, region))
    }

    /// Removes what members of `view` that were killed left in its shared-memory namespace
    /// (nothing over TCP; nothing of a member whose process is alive: it removes its own files
    /// when it closes).
    pub(super) fn remove_dead_files(&self, view: ViewId, members: &[NodeId]) {
        if self.transport != TransportKind::Shm {
            return;
        }
        let ns = self.shm_namespace(view);
        for p in members.iter().filter(|&&m| m != self.me).map(|m| PeerId(m.0)) {
            match ShmTransport::remove_files_of(&self.shm_dir, &ns, p) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(peer = %p, files = n, namespace = ns, "removed a departed member's files"),
                Err(e) => tracing::debug!(error = %e, "cannot list the shared-memory directory"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_group_and_view() {
        assert_ne!(derecho_wire::tag("a", 0), derecho_wire::tag("b", 0));
        assert_ne!(view_tag("a", ViewId(0)), view_tag("a", ViewId(1)));
        assert_ne!(view_tag("a", ViewId(0)), control_tag("a"));
        assert_eq!(view_tag("a", ViewId(3)), derecho_wire::tag("a", 3));
    }
}
