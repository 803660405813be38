//! The durable log on real files: appends made durable in batches, recovery after a torn write
//! or a flipped bit (the file is cut after its last valid record and appends continue), order
//! enforced, and a full device (`/dev/full`) that makes the log fail for good without ever
//! reporting a version persisted.

use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use derecho::Builder;
use derecho::persist::record::Damage;
use derecho::persist::{DurableLog, LogError};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("derecho-log-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn payload(v: u64) -> Vec<u8> {
    (0..(v % 50)).map(|i| (i as u8) ^ (v as u8)).collect()
}

#[test]
fn appends_are_batched_and_recovered() {
    let d = dir("roundtrip");
    let path = d.join("field.log");
    Builder::new().build().unwrap().block_on(async {
        let (log, rec) = DurableLog::open(&path).await.unwrap();
        assert!(rec.records.is_empty() && rec.damage.is_none());
        for v in 1..=100u64 {
            log.append(v, 1000 + v, &payload(v)).unwrap();
        }
        assert_eq!(log.persisted(), None);
        log.persist(100).await.unwrap();
        assert_eq!((log.persisted(), log.flushes()), (Some(100), 1), "one write and one sync for 100 versions");
        // Callers waiting together share rounds.
        for v in 101..=300u64 {
            log.append(v, 1000 + v, &payload(v)).unwrap();
        }
        let waits = (101..=300u64).map(|v| {
            let log: Rc<DurableLog> = log.clone();
            async move { log.persist(v).await }
        });
        for r in futures::future::join_all(waits).await {
            r.unwrap();
        }
        assert!(log.flushes() <= 3, "{} rounds for 200 waiting callers", log.flushes());
        // Order is enforced.
        assert!(matches!(log.append(300, 2000, b"x"), Err(LogError::OutOfOrder { .. })));
        assert!(matches!(log.append(301, 1, b"x"), Err(LogError::OutOfOrder { .. })));
    });
    Builder::new().build().unwrap().block_on(async {
        let (log, rec) = DurableLog::open(&path).await.unwrap();
        assert_eq!(rec.damage, None);
        assert_eq!(rec.records.len(), 300);
        for (i, (v, t, p)) in rec.records.iter().enumerate() {
            let want = i as u64 + 1;
            assert_eq!((*v, *t, p.clone()), (want, 1000 + want, payload(want)));
        }
        assert_eq!(log.persisted(), Some(300));
        log.append(301, 2000, b"after").unwrap();
        log.persist(301).await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_write_or_a_flipped_bit_cuts_the_log_there_and_appends_go_on() {
    let d = dir("damage");
    let path = d.join("field.log");
    let ex = Builder::new().build().unwrap();
    ex.block_on(async {
        let (log, _) = DurableLog::open(&path).await.unwrap();
        for v in 1..=10u64 {
            log.append(v, v, &payload(v)).unwrap();
        }
        log.persist(10).await.unwrap();
    });
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A write that stopped half way: a record header and part of its payload.
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut rec = Vec::new();
        derecho::persist::record::encode(&mut rec, 11, 11, &[7; 64]);
        f.write_all(&rec[..50]).unwrap();
    }
    ex.block_on(async {
        let (log, rec) = DurableLog::open(&path).await.unwrap();
        assert_eq!(rec.records.len(), 10);
        assert!(matches!(rec.damage, Some(Damage::Torn { .. })), "{:?}", rec.damage);
        assert_eq!(rec.cut, 50);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len, "the torn record is cut");
        log.append(11, 11, b"eleven").unwrap();
        log.persist(11).await.unwrap();
    });
    // A bit flipped inside record 4: records 1-3 survive, the rest is cut.
    {
        let mut bytes = std::fs::read(&path).unwrap();
        let scan = derecho::persist::record::scan(&bytes);
        let at = scan.records[3].payload_offset - 20;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
    }
    ex.block_on(async {
        let (log, rec) = DurableLog::open(&path).await.unwrap();
        assert_eq!(rec.records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(matches!(rec.damage, Some(Damage::Corrupt { .. })), "{:?}", rec.damage);
        assert_eq!(log.persisted(), Some(3));
        // The versions after the cut can be written again (refetched from other members).
        log.append(4, 4, &payload(4)).unwrap();
        log.persist(4).await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_full_device_fails_the_log_for_good() {
    let full = std::path::Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED a_full_device_fails_the_log_for_good: no /dev/full");
        return;
    }
    Builder::new().build().unwrap().block_on(async {
        let (log, rec) = DurableLog::open(full).await.unwrap();
        assert!(rec.records.is_empty());
        log.append(1, 1, b"one").unwrap();
        let e = log.persist(1).await.expect_err("ENOSPC");
        assert!(matches!(e, LogError::Failed { .. }), "{e}");
        assert!(e.to_string().contains("No space"), "{e}");
        assert_eq!(log.persisted(), None, "a version is never reported persisted after a failure");
        // Final: nothing more is accepted or persisted.
        assert!(matches!(log.append(2, 2, b"two"), Err(LogError::Failed { .. })));
        assert!(matches!(log.persist(1).await, Err(LogError::Failed { .. })));
    });
}
