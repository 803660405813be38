//! An application that calls back into its group from every upcall, and a replicated handler
//! that calls back into its service: each call gets an answer or a typed error, never a panic
//! (the driver holds no borrow of its own state while it runs application code).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use derecho::Builder;
use derecho::driver::{AppError, Application, Group, GroupBuilder, GroupSender, SendToError, State, ViewChange};
use derecho::protocol::{
    Delivered, DeliveryMode, MembershipConfig, NodeId, OneShard, ShardIndex, ShardRef, StopReason, SubgroupId, Version,
    View, ViewId,
};
use derecho::rpc::support::rkyv::{Archive, Deserialize, Serialize};
use derecho::rpc::{CallError, Service};
use derecho::runtime::time;

const SHARD: ShardRef = ShardRef { subgroup: SubgroupId(0), shard: ShardIndex(0) };
const WAIT: Duration = Duration::from_secs(20);
/// Values at or above this are echoes: a value below it sent by this member is sent again
/// (plus `ECHO`) from inside its delivery, and sent point to point to the other members.
const ECHO: u64 = 1000;
/// Receiving this value point to point, a member gives up ([`GroupSender::fatal`] from
/// inside `receive`, an upcall outside the driver's step).
const GIVE_UP: u64 = 777;

/// What one member's application saw.
#[derive(Default)]
struct Seen {
    upcalls: BTreeMap<&'static str, usize>,
    delivered: Vec<u64>,
    received: Vec<(u32, u64)>,
    /// Answers of the calls made from inside upcalls that failed (typed errors).
    errors: Vec<String>,
}

#[derive(Clone)]
struct Nosy {
    me: u32,
    sender: Rc<RefCell<Option<GroupSender>>>,
    group: Rc<RefCell<Option<Rc<Group>>>>,
    seen: Rc<RefCell<Seen>>,
}

impl Nosy {
    fn new(me: u32) -> Self {
        Self { me, sender: Rc::default(), group: Rc::default(), seen: Rc::default() }
    }

    /// Counts the upcall and calls every synchronous method of the sender and the group.
    fn poke(&self, upcall: &'static str) {
        *self.seen.borrow_mut().upcalls.entry(upcall).or_default() += 1;
        if let Some(s) = self.sender.borrow().as_ref() {
            let _ = (s.me(), s.view(), s.is_wedged(), s.persisted(SHARD));
            s.notify("nosy", b"x");
        }
        if let Some(g) = self.group.borrow().as_ref() {
            let _ = (g.me(), g.view(), g.members(), g.stopped(), g.delivered_count(SHARD), g.local_addr());
        }
    }

    fn sender(&self) -> Option<GroupSender> {
        self.sender.borrow().clone()
    }

    fn count(&self, upcall: &str) -> usize {
        self.seen.borrow().upcalls.get(upcall).copied().unwrap_or(0)
    }
}

impl Application for Nosy {
    fn attached(&mut self, sender: GroupSender) {
        *self.sender.borrow_mut() = Some(sender);
        self.poke("attached");
    }

    fn deliver(&mut self, m: Delivered<'_>) {
        self.poke("deliver");
        let v = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
        self.seen.borrow_mut().delivered.push(v);
        let Some(sender) = self.sender() else { return };
        // Durable at once (a report from inside a delivery is taken by the step under way).
        if let Some(version) = m.version {
            sender.report_persisted(m.shard, version);
        }
        if v < ECHO && m.sender == NodeId(self.me) {
            let (seen, me) = (self.seen.clone(), self.me);
            drop(derecho::spawn(async move {
                if let Err(e) = sender.send(SHARD, 8, |b| b.copy_from_slice(&(v + ECHO).to_le_bytes())).await {
                    seen.borrow_mut().errors.push(format!("echo of {v}: {e}"));
                }
                for to in sender.view().map(|v| v.members).unwrap_or_default() {
                    if to == NodeId(me) {
                        continue;
                    }
                    if let Err(e) = sender.send_to(to, &v.to_le_bytes()).await {
                        seen.borrow_mut().errors.push(format!("send_to {to}: {e}"));
                    }
                }
            }));
        }
    }

    fn snapshot(&mut self, _shard: ShardRef) -> State {
        self.poke("snapshot");
        State::Ready(self.seen.borrow().delivered.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn restore(&mut self, _shard: ShardRef, state: &[u8]) -> Result<(), AppError> {
        self.poke("restore");
        if !state.len().is_multiple_of(8) {
            return Err(format!("{} bytes is not a whole number of values", state.len()).into());
        }
        self.seen.borrow_mut().delivered = state.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        Ok(())
    }

    fn view_installed(&mut self, _change: &ViewChange) {
        self.poke("view_installed");
    }

    fn persistent(&self) -> bool {
        true
    }

    fn save_proposal(&mut self, _id: ViewId, _members: &[NodeId]) -> Result<(), AppError> {
        self.poke("save_proposal");
        Ok(())
    }

    fn save_view(&mut self, _view: &View, _addresses: &[(NodeId, String)]) -> Result<(), AppError> {
        self.poke("save_view");
        Ok(())
    }

    fn resend_failed(&mut self, _shard: ShardRef, _count: usize) {
        self.poke("resend_failed");
    }

    fn receive(&mut self, from: NodeId, body: &[u8]) {
        self.poke("receive");
        let v = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        self.seen.borrow_mut().received.push((from.0, v));
        // A report, and a fatal error, from outside a step.
        if let Some(s) = self.sender() {
            s.report_persisted(SHARD, Version::from_u64(0));
            if v == GIVE_UP {
                s.fatal("the application gave up");
            }
        }
    }

    fn stopped(&mut self) {
        self.poke("stopped");
    }

    fn persisted(&mut self, shard: ShardRef, local: Option<Version>, _global: Option<Version>) {
        self.poke("persisted");
        // The same frontier again: ignored, not a loop.
        if let (Some(s), Some(l)) = (self.sender(), local) {
            s.report_persisted(shard, l);
        }
    }
}

fn builder(me: u32) -> GroupBuilder {
    let membership = MembershipConfig {
        heartbeat: Duration::from_millis(5),
        suspect_after: Duration::from_millis(300),
        ..MembershipConfig::default()
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    GroupBuilder::new(NodeId(me), local)
        .insecure()
        .name("reentrancy-test")
        .membership(membership)
        .layout(OneShard { mode: DeliveryMode::Ordered, min_members: 1 })
        .connect_timeout(Duration::from_secs(3))
        .join_timeout(WAIT)
}

/// Waits (bounded) until `cond` holds, failing with `what` and the state `describe` gives.
async fn until(what: &str, mut cond: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}; {}", describe());
        time::sleep(Duration::from_millis(2)).await;
    }
}

async fn send(g: &Group, v: u64) {
    g.send(SHARD, 8, |b| b.copy_from_slice(&v.to_le_bytes())).await.expect("send");
}

#[test]
fn an_application_that_calls_back_from_every_upcall_gets_answers() {
    Builder::new().build().unwrap().block_on(async {
        let apps: Vec<Nosy> = (0..3).map(Nosy::new).collect();
        let a = Rc::new(builder(0).start(apps[0].clone()).await.expect("start"));
        *apps[0].group.borrow_mut() = Some(a.clone());
        let b = Rc::new(builder(1).join(a.local_addr(), apps[1].clone()).await.expect("join"));
        *apps[1].group.borrow_mut() = Some(b.clone());
        for g in [&*a, &*b] {
            g.wait_view(WAIT, |v| v.members.len() == 2).await.expect("a view of two");
        }
        for v in 0..10 {
            send(&a, v).await;
            send(&b, 100 + v).await;
        }
        let delivered = |i: usize| apps[i].seen.borrow().delivered.len();
        until(
            "40 values (20 and their echoes) at both",
            || delivered(0) >= 40 && delivered(1) >= 40,
            || format!("{} and {}; errors {:?}", delivered(0), delivered(1), apps[0].seen.borrow().errors),
        )
        .await;

        // A third member joins: a snapshot is taken at an old member, restored at the new one.
        let c = Rc::new(builder(2).join(a.local_addr(), apps[2].clone()).await.expect("join"));
        *apps[2].group.borrow_mut() = Some(c.clone());
        for g in [&*a, &*b, &*c] {
            g.wait_view(WAIT, |v| v.members.len() == 3).await.expect("a view of three");
        }
        send(&a, 20).await;
        until(
            "the new member delivered the state and value 20 with its echo",
            || delivered(2) >= 42,
            || format!("{}; errors {:?}", delivered(2), apps[2].seen.borrow().errors),
        )
        .await;
        assert_eq!(apps[2].seen.borrow().delivered, apps[0].seen.borrow().delivered[..42]);
        let received = |i: usize| apps[i].seen.borrow().received.len();
        until(
            "the point-to-point sends received",
            || received(0) >= 10 && received(1) >= 11,
            || format!("{} and {}", received(0), received(1)),
        )
        .await;

        // Member 2 gives up from inside an upcall: it stops with its reason, the others go on.
        a.sender().send_to(NodeId(2), &GIVE_UP.to_le_bytes()).await.expect("send_to");
        until("member 2 stopped", || c.stopped().is_some(), String::new).await;
        assert_eq!(c.stopped(), Some(StopReason::Failed("the application gave up".into())));
        for g in [&*a, &*b] {
            g.wait_view(WAIT, |v| v.members == [NodeId(0), NodeId(1)]).await.expect("a view without 2");
        }
        assert_eq!(apps[2].count("stopped"), 1, "the application is told once");
        assert!(
            matches!(c.sender().send_to(NodeId(0), b"late").await, Err(SendToError::Closed)),
            "a member that stopped refuses sends"
        );
        for (i, app) in apps.iter().enumerate() {
            let needed: &[&str] = match i {
                0 => &[
                    "attached",
                    "deliver",
                    "view_installed",
                    "snapshot",
                    "save_proposal",
                    "save_view",
                    "persisted",
                    "receive",
                ],
                1 => &["attached", "deliver", "view_installed", "save_view", "persisted", "receive"],
                _ => &["attached", "restore", "deliver", "view_installed", "save_view", "stopped"],
            };
            for upcall in needed {
                assert!(app.count(upcall) > 0, "member {i}: no {upcall} upcall; saw {:?}", app.seen.borrow().upcalls);
            }
        }
        for (i, app) in apps.iter().take(2).enumerate() {
            assert!(app.seen.borrow().errors.is_empty(), "member {i}: {:?}", app.seen.borrow().errors);
        }
        for app in &apps {
            app.group.borrow_mut().take();
        }
        for g in [a, b, c] {
            g.close().await;
        }
    });
}

/// A replicated counter whose handlers call back into their own service.
#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rpc::support::rkyv)]
pub struct Probe {
    n: u64,
}

thread_local! {
    /// The service and client a handler calls back into (a replica cannot hold them: it is
    /// archived).
    static HOME: RefCell<Option<(Service, ProbeClient)>> = const { RefCell::new(None) };
}

fn home() -> (Service, ProbeClient) {
    HOME.with(|h| h.borrow().clone()).expect("the service is set")
}

#[derecho::replicated]
impl Probe {
    /// Adds one, and calls every synchronous method of the service: what it saw.
    pub fn poke(&mut self) -> String {
        self.n += 1;
        let (service, client) = home();
        // The replica is in use by this handler: no read of it now.
        let read = service.read::<Probe, _>(SHARD, |p| p.n);
        let _ = service.persisted(SHARD);
        service.set_call_timeout(WAIT);
        service.on_persisted(|_, _, _| {});
        // A call spawned from a handler runs once it returns.
        drop(derecho::spawn(async move {
            let _ = client.peek(NodeId(0)).await;
        }));
        format!("read {read:?}")
    }

    /// Awaits a query of its own shard at this member: refused (it would wait for itself).
    pub async fn nested(&mut self) -> String {
        let (_, client) = home();
        match client.peek(NodeId(0)).await {
            Err(e @ CallError::FromHandler(_)) => format!("refused: {e}"),
            other => format!("unexpected: {other:?}"),
        }
    }

    /// The count.
    pub fn peek(&self) -> u64 {
        self.n
    }
}

#[test]
fn handlers_and_persistence_callbacks_that_call_back_into_the_service_get_answers() {
    let dir = std::env::temp_dir().join(format!("derecho-reentrancy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Builder::new().build().unwrap().block_on(async {
        let service = Service::new();
        service.host(SubgroupId(0), Probe::default);
        service.persist_to(&dir).expect("a log directory");
        // A callback that reads the replica, asks the frontiers and registers another callback.
        let reads: Rc<RefCell<Vec<Option<u64>>>> = Rc::default();
        let (s, r) = (service.clone(), reads.clone());
        let mut registered = false;
        service.on_persisted(move |shard, _, _| {
            r.borrow_mut().push(s.read::<Probe, _>(shard, |p| p.n));
            let _ = s.persisted(shard);
            if !std::mem::replace(&mut registered, true) {
                let r = r.clone();
                s.on_persisted(move |_, _, _| r.borrow_mut().push(None));
            }
        });
        let group = service.start_or_join(builder(0), None).await.expect("start");
        let client = ProbeClient::new(service.handle::<Probe>(SHARD));
        HOME.with(|h| *h.borrow_mut() = Some((service.clone(), client.clone())));
        for _ in 0..3 {
            let replies = client.poke().await.expect("poke");
            assert_eq!(replies.replies[&NodeId(0)].as_deref().expect("a reply"), "read None");
        }
        let nested = client.nested().await.expect("nested");
        let said = nested.replies[&NodeId(0)].as_deref().expect("a reply").to_string();
        assert!(said.starts_with("refused: "), "{said}");
        assert_eq!(client.peek(NodeId(0)).await.expect("peek"), 3);
        until(
            "the persistence callbacks ran",
            || reads.borrow().contains(&Some(3)),
            || format!("{:?}", reads.borrow()),
        )
        .await;
        // The callback registered from the first one runs from the next move on: make one.
        client.poke().await.expect("poke");
        until(
            "the callback registered from a callback ran",
            || reads.borrow().contains(&None),
            || format!("{:?}", reads.borrow()),
        )
        .await;
        HOME.with(|h| h.borrow_mut().take());
        group.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
