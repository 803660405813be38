//! What an operator sees of a running group: `Group::metrics` and the Prometheus text a
//! member's metrics listener serves, scraped over HTTP while ordered calls flow.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use derecho::driver::Metrics;
use derecho::prelude::*;
use derecho::protocol::member::Stage;
use derecho::runtime::AlignedBuf;
use derecho::runtime::net::TcpStream;
use derecho::runtime::time;
use derecho_examples::status;

#[derive(Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = derecho::rkyv)]
pub struct Tally {
    n: u64,
}

#[replicated]
impl Tally {
    /// Adds one; the count after it.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// `GET /metrics` from `address`, on this executor (the member answering runs on it too).
async fn scrape(address: SocketAddr) -> String {
    let stream = time::timeout(WAIT, TcpStream::connect(address)).await.expect("connect in time").expect("connect");
    stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await.expect("send the request");
    let mut buf = AlignedBuf::zeroed(1 << 20);
    let mut len = 0;
    loop {
        let (r, b) = time::timeout(WAIT, stream.recv(buf, len)).await.expect("an answer in time");
        buf = b;
        match r.expect("receive") {
            0 => break,
            n => len += n,
        }
    }
    let text = String::from_utf8(buf[..len].to_vec()).expect("text");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

fn delivered(m: &Metrics) -> u64 {
    m.shards.iter().map(|s| s.delivered).sum()
}

#[test]
fn metrics_move_as_messages_flow_and_the_listener_serves_them() {
    Builder::new().build().unwrap().block_on(async {
        let mut members: Vec<(Group, Service)> = Vec::new();
        let mut listeners = Vec::new();
        for id in 0..2 {
            let service = Service::new();
            service.host(SubgroupId(0), Tally::default);
            let membership =
                derecho::protocol::MembershipConfig { suspect_after: Duration::from_millis(300), ..Default::default() };
            let builder =
                GroupBuilder::new(NodeId(id), "127.0.0.1:0".parse().unwrap()).insecure().membership(membership);
            let contact = members.first().map(|(g, _)| g.local_addr());
            let group = service.start_or_join(builder, contact).await.expect("start or join");
            listeners.push(group.serve_metrics("127.0.0.1:0".parse().unwrap()).expect("a metrics listener"));
            members.push((group, service));
        }
        let view = members[0].0.wait_view(WAIT, |v| v.members.len() == 2).await.expect("two members");

        // Before any call: running, in the view, nothing delivered.
        let before = members[0].0.metrics();
        assert_eq!((before.me, before.stage, before.view), (NodeId(0), Stage::Running, Some(view.id)));
        assert_eq!((before.members.clone(), before.rank), (vec![NodeId(0), NodeId(1)], Some(0)));
        assert!(before.views_installed >= 2, "{before:?}");
        assert_eq!(delivered(&before), 0, "{before:?}");
        let text = scrape(listeners[1]).await;
        let row = status::row("m1", &text);
        assert_eq!((row.member, row.stage.as_str(), row.view), (Some(1), "running", Some((i64::from(view.id.0), 2))));
        assert_eq!(row.shards["0/0"].delivered, 0, "{text}");

        assert_eq!(members[1].0.metrics_addr(), Some(listeners[1]));
        // Calls flow: both members count them, a watcher of member 1 wakes, and the listener's
        // text follows.
        let tally = members[0].1.client::<Tally>(ShardRef::new(0, 0));
        let calls = async {
            for _ in 0..25 {
                tally.bump().await.expect("an ordered call");
            }
        };
        let (woke, ()) = futures::join!(time::timeout(WAIT, members[1].0.changed()), calls);
        woke.expect("the watcher woke as messages were delivered");
        let deadline = Instant::now() + WAIT;
        while delivered(&members[1].0.metrics()) < 25 {
            assert!(Instant::now() < deadline, "member 1 did not count 25 deliveries: {:?}", members[1].0.metrics());
            time::sleep(Duration::from_millis(5)).await;
        }
        let after = members[0].0.metrics();
        let shard = &after.shards[0];
        assert_eq!((shard.shard, shard.sent, shard.delivered), (ShardRef::new(0, 0), 25, 25), "{after:?}");
        assert!(shard.in_flight.is_some_and(|n| n <= 25), "{after:?}");
        assert!(after.executor.iterations > before.executor.iterations, "the executor loop count moved");
        let text = scrape(listeners[1]).await;
        assert!(text.contains("derecho_shard_delivered_total{subgroup=\"0\",shard=\"0\"} 25"), "{text}");
        assert!(text.contains("derecho_shard_sent_total{subgroup=\"0\",shard=\"0\"} 0"), "{text}");
        assert!(text.contains("derecho_stage{stage=\"running\"} 1"), "{text}");
        assert_eq!(status::row("m1", &text).shards["0/0"].delivered, 25);

        // Anything but /metrics is 404; the group closed, the listener is gone.
        let stream = TcpStream::connect(listeners[0]).await.expect("connect");
        stream.send_all(b"GET /secrets HTTP/1.1\r\n\r\n".to_vec()).await.unwrap();
        let (n, buf) = time::timeout(WAIT, stream.recv(AlignedBuf::zeroed(4096), 0)).await.expect("an answer");
        assert!(buf[..n.unwrap()].starts_with(b"HTTP/1.1 404"));
        for (g, _) in &members {
            g.close().await;
        }
        assert!(TcpStream::connect(listeners[0]).await.is_err(), "the metrics listener closed with its group");
    });
}
