//! Mutual TLS between member processes (`ledger_member --tls`) and with external clients: a
//! group whose members present certificates of one authority forms and serves a client that
//! presents one too; a client without TLS, a client of another authority, and a member whose
//! certificate names another node id get nowhere.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use derecho::protocol::ShardRef;
use derecho::rpc::{ExternalClient, ExternalHandle, block_on};
use derecho::runtime::tls::DevCa;
use derecho_tests::kv_process::{Member, three_members};
use derecho_tests::ledger::{Ledger, LedgerExternal};

const SHARD: ShardRef = ShardRef::new(0, 0);

/// Removes a directory when dropped.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn members_and_clients_authenticate_and_outsiders_get_nowhere() {
    let dir = Dir(std::env::temp_dir().join(format!("derecho-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let ca = DevCa::new().unwrap();
    ca.write_nodes(&dir.0, [0, 1, 2, 7]).unwrap();
    let program = env!("CARGO_BIN_EXE_ledger_member");
    let tls = |extra: &[&str]| -> Vec<OsString> {
        let mut a = vec![OsString::from("--tls"), dir.0.clone().into_os_string()];
        a.extend(extra.iter().map(OsString::from));
        a
    };
    let dir_arg = dir.0.display().to_string();
    let (mut members, addrs) = three_members(program, &["--tls", &dir_arg, "--only-client", "alice.example"]);
    let a0 = addrs[0].clone();
    // A client with a certificate of the group's authority calls.
    let client = ExternalClient::builder("ledger", addrs.clone())
        .timeout(Duration::from_secs(10))
        .tls(ca.identity("alice.example").unwrap())
        .build();
    let ledger = LedgerExternal::new(ExternalHandle::<Ledger>::new(client.clone(), SHARD));
    for op in 0..50u64 {
        block_on(ledger.add(op)).expect("a call over TLS");
    }
    // Handlers see alice's identity: an ordered call's at every replica (it travels with the
    // call), a query's at the member serving it.
    assert_eq!(block_on(ledger.sign(7)).expect("alice signs").1, "alice.example");
    for m in 0..3 {
        let at = Some(derecho::protocol::NodeId(m));
        let signer = block_on(ledger.signer(at, 7)).expect("who signed, at each member");
        assert_eq!(signer.as_deref(), Some("alice.example"), "member {m}");
    }
    assert_eq!(block_on(ledger.whoami(None)).expect("a query").as_deref(), Some("alice.example"));
    // The service authorises by identity: bob has a valid certificate, and is refused.
    let bob = ExternalClient::builder("ledger", addrs.clone())
        .timeout(Duration::from_secs(10))
        .tls(ca.identity("bob.example").unwrap())
        .build();
    let bob_ledger = LedgerExternal::new(ExternalHandle::<Ledger>::new(bob, SHARD));
    match block_on(bob_ledger.add(5000)) {
        Err(derecho::rpc::ClientError::Remote { kind: derecho::rpc::RemoteKind::Unauthorized, reason }) => {
            assert!(reason.contains("bob.example") && reason.contains("only alice.example"), "{reason}");
        }
        other => panic!("bob's call: {other:?}"),
    }
    let (all, _) = block_on(ledger.report(None)).expect("alice reads the ledger");
    assert!(!all.contains(&5000), "bob's refused call was applied");
    // Without TLS, or with another authority's certificate, a client gets nowhere.
    let quick = |b: derecho::rpc::ClientBuilder| b.timeout(Duration::from_secs(2)).build();
    let plain = quick(ExternalClient::builder("ledger", addrs.clone()));
    let e = plain.blocking().refresh_view().expect_err("a plaintext client got a view");
    eprintln!("plaintext client: {e}");
    let other = DevCa::new().unwrap();
    let stranger =
        quick(ExternalClient::builder("ledger", addrs.clone()).tls(other.identity("mallory.example").unwrap()));
    let e = stranger.blocking().refresh_view().expect_err("a client of another authority got a view");
    eprintln!("client of another authority: {e}");
    // A member whose certificate names node 7 claims to be node 3: never admitted.
    let mut liar = Member::spawn(program, 3, &tls(&["--contact", &a0, "--tls-as", "7"]));
    let _ = liar.expect("listening ");
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let v = client.blocking().refresh_view().expect("the view");
        assert_eq!(v.members.len(), 3, "a member with another node's certificate was admitted: {:?}", v.members);
        std::thread::sleep(Duration::from_millis(200));
    }
    liar.kill();
    // The group still serves.
    block_on(ledger.add(1000)).expect("a call after the attempts");
    for m in &mut members {
        m.finish();
    }
}
