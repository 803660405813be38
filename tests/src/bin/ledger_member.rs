//! One member process of the replicated [`Ledger`] for `tests/external_clients.rs`: external
//! clients call it while members are killed.
//!
//! ```text
//! ledger_member --me N [--contact ADDR] [--persist DIR] [--allow ID,ID,...] [--tls DIR [--tls-as ID]]
//!               [--only-client NAME]
//! ```
//!
//! With `--tls`, every connection runs mutual TLS with `DIR/ca.pem`, `DIR/node-ID.pem` and
//! `DIR/node-ID.key` (ID: `--tls-as`, by default its own id). With `--only-client`, only the
//! external client whose certificate names NAME may call (`Service::authorize`).
//!
//! Standard output: `listening ADDR` (before it starts or joins), then `ready` once its view has
//! three members. It runs until its standard input closes (or says `exit`).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use derecho::protocol::SubgroupId;
use derecho::rpc::Service;
use derecho::runtime::time;
use derecho_tests::ledger::Ledger;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn main() {
    derecho::logging::init_default("warn");
    // A panic anywhere (the executor would contain one in a task) ends the process, so that a
    // test sees a member fail on bad input.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let me: u32 = arg(&args, "--me").expect("--me").parse().expect("a node id");
    let contact: Option<SocketAddr> = arg(&args, "--contact").map(|c| c.parse().expect("an address"));
    let persist = arg(&args, "--persist").map(std::path::PathBuf::from);
    let rx = derecho_tests::child::stdin_lines();
    derecho::Builder::new().build().expect("executor").block_on(async move {
        let mut builder = derecho_tests::child::loopback_member(me, "ledger");
        if let Some(dir) = arg(&args, "--tls") {
            let dir = std::path::Path::new(dir);
            let who = arg(&args, "--tls-as").map_or(me, |w| w.parse().expect("an id"));
            let identity = derecho::runtime::tls::TlsIdentity::from_pem_files(
                &dir.join("ca.pem"),
                &dir.join(format!("node-{who}.pem")),
                &dir.join(format!("node-{who}.key")),
            )
            .expect("the TLS files");
            builder = builder.tls(identity);
        }
        if let Some(ids) = arg(&args, "--allow") {
            builder = builder.allow_only(ids.split(',').map(|i| derecho::protocol::NodeId(i.parse().expect("an id"))));
        }
        let service = Service::new();
        service.host(SubgroupId(0), Ledger::default);
        if let Some(name) = arg(&args, "--only-client").map(str::to_string) {
            service.authorize(move |c| match c.identity {
                Some(id) if id == name => Ok(()),
                other => Err(format!("{other:?} may not call; only {name} may")),
            });
        }
        if let Some(dir) = &persist {
            service.persist_to(dir).expect("the log directory");
        }
        let group = service.start_or_join(builder, contact).await.expect("start or join");
        group.wait_view(Duration::from_secs(30), |v| v.members.len() == 3).await.expect("a view of three");
        println!("ready");
        loop {
            match rx.try_recv() {
                Ok(l) if l == "exit" => break,
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => time::sleep(Duration::from_millis(5)).await,
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        }
        group.close().await;
    });
}
