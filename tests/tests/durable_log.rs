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
    // The records end before the file does: zeros are written ahead of them.
    let good_len = derecho::persist::record::scan(&std::fs::read(&path).unwrap()).valid_len as u64;
    assert!(std::fs::metadata(&path).unwrap().len() > good_len, "no zeros ahead of the records");
    // A write that stopped half way, at the end of the file: a record header and part of its
    // payload.
    {
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(good_len).unwrap();
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

#[test]
fn zeros_written_ahead_are_the_logs_end_and_records_fill_them() {
    let d = dir("ahead");
    let path = d.join("field.log");
    let len = || std::fs::metadata(&path).unwrap().len();
    let ex = Builder::new().build().unwrap();
    let mut v = 0u64;
    // Small rounds, one version each, past the first megabyte of zeros: the file grows a
    // megabyte at a time, ahead of the records.
    ex.block_on(async {
        let (log, _) = DurableLog::open(&path).await.unwrap();
        log.append(1, 1, b"one").unwrap();
        v = 1;
        log.persist(1).await.unwrap();
        let first = len();
        assert!(first >= 1 << 20, "{first} bytes: no zeros ahead of a small round");
        while len() == first {
            v += 1;
            log.append(v, v, &[v as u8; 4000]).unwrap();
            log.persist(v).await.unwrap();
        }
        assert!(len() > first + (1 << 19), "the file grew by {} bytes", len() - first);
    });
    // A clean reopen keeps the zeros (no cut, no damage) and writes into them.
    let before = len();
    ex.block_on(async {
        let (log, rec) = DurableLog::open(&path).await.unwrap();
        assert_eq!((rec.damage, rec.cut, rec.records.len() as u64), (None, 0, v));
        assert_eq!(len(), before, "the zeros ahead were cut");
        v += 1;
        log.append(v, v, b"after").unwrap();
        log.persist(v).await.unwrap();
        assert_eq!(len(), before, "a record written into the zeros grew the file");
        // A round above 16 KiB that passes the file's end is appended: no zeros after it.
        let end = derecho::persist::record::scan(&std::fs::read(&path).unwrap()).valid_len as u64;
        let big = vec![9u8; (before - end) as usize + (100 << 10)];
        v += 1;
        log.append(v, v, &big).unwrap();
        log.persist(v).await.unwrap();
        let scan = derecho::persist::record::scan(&std::fs::read(&path).unwrap());
        assert_eq!(scan.valid_len as u64, len(), "zeros written after a large round");
    });
    ex.block_on(async {
        let (_, rec) = DurableLog::open(&path).await.unwrap();
        assert_eq!((rec.damage, rec.cut), (None, 0));
        assert_eq!(rec.records.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=v).collect::<Vec<_>>());
        let last = &rec.records.last().unwrap().2;
        assert!(last.len() > 100 << 10 && last.iter().all(|&b| b == 9), "the large record reads back");
    });
    let _ = std::fs::remove_dir_all(&d);
}
