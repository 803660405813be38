//! What an operator sees of a member: [`Metrics`] (a snapshot, [`Group::metrics`]), its
//! Prometheus text ([`Metrics::to_prometheus`]) and a small HTTP listener that serves it
//! ([`Group::serve_metrics`], or the `metrics_listen` configuration key).
//!
//! Counters (`_total`) only grow over the member's life; rates are the scraper's business
//! (Prometheus' `rate()`, or `kv status --watch`, which compares two scrapes).

use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use derecho_runtime::net::{TcpListener, TcpStream};
use derecho_runtime::{AlignedBuf, LoopStats, spawn, time};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Group;
use super::runner::Inner;
use crate::protocol::member::Stage;
use crate::protocol::{NodeId, ShardRef, Version, ViewId};

/// A member's state at one moment ([`Group::metrics`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// This member.
    pub me: NodeId,
    /// Joining, restarting, running, wedged or stopped.
    pub stage: Stage,
    /// What it waits for, when it says (a restart's quorum, a contact that does not answer).
    pub waiting: Option<String>,
    /// The view installed here (`None` before the first).
    pub view: Option<ViewId>,
    /// Its members, oldest first.
    pub members: Vec<NodeId>,
    /// This member's rank in it.
    pub rank: Option<usize>,
    /// Views installed here since the member started.
    pub views_installed: u64,
    /// The shards this member belongs to in the view, and shards it counted messages of before.
    pub shards: Vec<ShardMetrics>,
    /// Bytes of application frames held for a view not installed here yet.
    pub held_bytes: u64,
    /// The executor's loop: iterations, parks, tasks polled.
    pub executor: LoopStats,
}

/// One shard, as this member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardMetrics {
    /// The shard.
    pub shard: ShardRef,
    /// Its members in the current view (empty if this member no longer belongs to it).
    pub members: Vec<NodeId>,
    /// Messages this member sent in it (since the member started).
    pub sent: u64,
    /// Messages delivered here (since the member started).
    pub delivered: u64,
    /// The last version durable here.
    pub persisted_here: Option<Version>,
    /// The last version durable at every member of the shard.
    pub persisted_everywhere: Option<Version>,
    /// This member's messages sent in the current view and not yet delivered at every member
    /// (what counts against the send window; `None` outside the shard, or while a delivery
    /// holds the member).
    pub in_flight: Option<u64>,
}

impl Group {
    /// A snapshot of this member's state (see [`Metrics`]). Cheap: it copies counters the
    /// member keeps anyway.
    pub fn metrics(&self) -> Metrics {
        self.inner.metrics()
    }

    /// Serves [`Metrics::to_prometheus`] over HTTP at `address` (`GET /metrics`) until the group
    /// closes; returns the bound address. At most 16 scrapes at once, each given 2 seconds to
    /// send its request; anything else is answered 404.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub fn serve_metrics(&self, address: SocketAddr) -> std::io::Result<SocketAddr> {
        serve(&self.inner, address)
    }

    /// The address the metrics listener listens on, if this member serves metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr.get()
    }

    /// Resolves when something [`Group::metrics`] shows may have changed beyond its counters: a
    /// view installed, a view change starting or ending, messages delivered, a frontier moving,
    /// a stop (or sooner: a wake-up never misses a change). A live display awaits it, or a
    /// timer, and reads [`Group::metrics`] again.
    pub async fn changed(&self) {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered {
                return std::task::Poll::Ready(());
            }
            registered = true;
            self.inner.waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }
}

pub(super) fn serve(inner: &Rc<Inner>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for metrics on {address}: {e}")))?;
    let bound = listener.local_addr();
    inner.metrics_addr.set(Some(bound));
    let weak = Rc::downgrade(inner);
    inner.spawn_task(async move { accept_loop(listener, weak).await });
    inner.span().in_scope(|| tracing::info!(address = %bound, "serving metrics at /metrics"));
    Ok(bound)
}

/// Scrapes served at once; more wait in the kernel's backlog.
const SCRAPES_MAX: usize = 16;
/// Bytes of a request read at most.
const REQUEST_LEN_MAX: usize = 8 << 10;

async fn accept_loop(listener: TcpListener, inner: Weak<Inner>) {
    let busy = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if inner.strong_count() == 0 {
            return;
        }
        if busy.get() >= SCRAPES_MAX {
            stream.shutdown();
            continue;
        }
        busy.set(busy.get() + 1);
        let (inner, busy) = (inner.clone(), busy.clone());
        drop(spawn(async move {
            let _ = time::timeout(Duration::from_secs(2), answer(stream, inner)).await;
            busy.set(busy.get() - 1);
        }));
    }
}

async fn answer(stream: TcpStream, inner: Weak<Inner>) {
    let mut buf = AlignedBuf::zeroed(REQUEST_LEN_MAX);
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == REQUEST_LEN_MAX {
            return;
        }
        let (r, b) = stream.recv(buf, len).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
    let request = &buf[..len];
    let wanted = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ");
    let (status, body) = match (wanted, inner.upgrade()) {
        (true, Some(inner)) => ("200 OK", inner.metrics().to_prometheus()),
        (true, None) => ("503 Service Unavailable", "the member has closed\n".to_string()),
        (false, _) => ("404 Not Found", "GET /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.send_all(response.into_bytes()).await;
    stream.shutdown_write();
}

type Labels = Vec<(String, String)>;

fn shard_labels(s: &ShardRef) -> Labels {
    vec![("subgroup".into(), s.subgroup.0.to_string()), ("shard".into(), s.shard.0.to_string())]
}

impl Metrics {
    /// The metrics in the Prometheus text format (version 0.0.4), every name prefixed
    /// `derecho_`.
    pub fn to_prometheus(&self) -> String {
        let mut r = Registry::with_prefix("derecho");
        let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            r.register(name, help, g);
        };
        let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            r.register(name, help, c);
        };
        gauge(&mut r, "member_id", "This member's node id", i64::from(self.me.0));
        let stages = Family::<Labels, Gauge>::default();
        for s in [Stage::Joining, Stage::Restarting, Stage::Running, Stage::Wedged, Stage::Stopped] {
            stages.get_or_create(&vec![("stage".into(), s.as_str().into())]).set(i64::from(s == self.stage));
        }
        r.register("stage", "1 for the stage this member is in", stages);
        gauge(
            &mut r,
            "view_id",
            "The view installed here (-1 before the first)",
            self.view.map_or(-1, |v| i64::from(v.0)),
        );
        gauge(&mut r, "view_members", "Members of the view installed here", self.members.len() as i64);
        gauge(&mut r, "rank", "This member's rank in the view (-1 outside one)", self.rank.map_or(-1, |r| r as i64));
        counter(&mut r, "views_installed", "Views installed since the member started", self.views_installed);
        gauge(&mut r, "held_bytes", "Bytes held for a view not installed here yet", self.held_bytes as i64);
        let sent = Family::<Labels, Counter>::default();
        let delivered = Family::<Labels, Counter>::default();
        let members = Family::<Labels, Gauge>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let here = Family::<Labels, Gauge>::default();
        let everywhere = Family::<Labels, Gauge>::default();
        for s in &self.shards {
            let l = shard_labels(&s.shard);
            sent.get_or_create(&l).inc_by(s.sent);
            delivered.get_or_create(&l).inc_by(s.delivered);
            members.get_or_create(&l).set(s.members.len() as i64);
            if let Some(n) = s.in_flight {
                in_flight.get_or_create(&l).set(n as i64);
            }
            for (family, v) in [(&here, s.persisted_here), (&everywhere, s.persisted_everywhere)] {
                if let Some(v) = v {
                    let mut l = l.clone();
                    l.push(("view".into(), v.view().0.to_string()));
                    family.get_or_create(&l).set(v.seq() as i64);
                }
            }
        }
        r.register("shard_sent", "Messages this member sent in the shard", sent);
        r.register("shard_delivered", "Messages delivered in the shard", delivered);
        r.register("shard_members", "Members of the shard in the current view", members);
        r.register("shard_in_flight", "This member's messages not yet delivered at every member", in_flight);
        r.register(
            "shard_persisted_here_seq",
            "The last version durable here: its sequence number (label view: its view)",
            here,
        );
        r.register(
            "shard_persisted_everywhere_seq",
            "The last version durable at every member of the shard: its sequence number (label view: its view)",
            everywhere,
        );
        counter(&mut r, "executor_iterations", "Executor loop iterations", self.executor.iterations);
        counter(&mut r, "executor_parks", "Times the executor slept in the kernel", self.executor.parks);
        counter(&mut r, "executor_tasks_polled", "Tasks polled by the executor", self.executor.tasks_run);
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String does not fail");
        if let Some(w) = &self.waiting {
            // A comment: free text has no place among the samples.
            out.insert_str(0, &format!("# derecho waiting: {}\n", w.replace('\n', " ")));
        }
        out
    }
}
