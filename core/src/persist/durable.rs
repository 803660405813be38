//! A durable log on disk: records appended in memory, made durable in batches through the
//! runtime's io_uring file operations (one write and one `fdatasync` cover every record
//! appended before them), and recovered at open by [`record::scan`](super::record::scan), which
//! cuts the file after its last valid record.
//!
//! The file runs ahead of its records with zeros written (and synced) in advance, a megabyte at
//! a time: a round that overwrites those zeros changes no file metadata, so its `fdatasync`
//! flushes the data alone and skips the journal commit an append needs (on ext4 here about
//! 150 µs instead of 200-220 µs; `benches/README.md`). Rounds larger than 16 KiB are bound by
//! the disk's bandwidth rather than its latency, and are appended without zeros ahead (writing
//! zeros first would halve their rate). A scan reads zeros after the last record as the log's
//! end.
//!
//! A write or sync error is final: the log reports nothing persisted after it, ever (an
//! `fsync` that failed may have dropped the dirty pages; retrying it and trusting the retry
//! would report data durable that is not). The owner leaves the group with the error.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use derecho_runtime::AlignedBuf;
use derecho_runtime::fs::File;

use super::record::{self, Damage};

/// Zeros written ahead of the last record when a small round reaches the file's end.
const ZEROS_AHEAD: u64 = 1 << 20;
/// Rounds above this many bytes are appended without zeros ahead (see the module doc).
const ZEROS_AHEAD_ROUND_MAX: usize = 16 << 10;

/// Errors of a durable log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The file could not be opened, read or cut at recovery.
    #[error("cannot open the log {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A record's version or timestamp does not go forward.
    #[error("version {version} (time {hlc}) does not follow version {last} (time {last_hlc})")]
    OutOfOrder {
        /// The version appended.
        version: u64,
        /// Its timestamp.
        hlc: u64,
        /// The last version in the log.
        last: u64,
        /// Its timestamp.
        last_hlc: u64,
    },
    /// A payload above the record limit.
    #[error("a payload of {0} bytes is above the record limit")]
    TooLarge(usize),
    /// A write or sync failed (a full disk, an I/O error): nothing more is ever persisted.
    #[error("the log {path} failed and persists nothing more: {reason}")]
    Failed {
        /// The file.
        path: String,
        /// The first error.
        reason: String,
    },
}

/// What recovery found in a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Every valid record: version, timestamp, payload.
    pub records: Vec<(u64, u64, Vec<u8>)>,
    /// Why the log ended early, if it did.
    pub damage: Option<Damage>,
    /// Bytes cut from the end of the file.
    pub cut: u64,
}

/// A durable log; see the module documentation.
#[derive(Debug)]
pub struct DurableLog {
    path: PathBuf,
    file: File,
    /// Bytes of records written and synced.
    end: Cell<u64>,
    /// The file's length (at least): after `end` it holds zeros.
    allocated: Cell<u64>,
    /// Set when the zeros ahead did not fit: none are written any more.
    no_zeros: Cell<bool>,
    /// Records appended, not yet written.
    pending: RefCell<Vec<u8>>,
    /// The last version appended, with its timestamp.
    last: Cell<Option<(u64, u64)>>,
    /// The last version of the records in `pending`.
    pending_last: Cell<Option<u64>>,
    /// The last version durable on disk.
    persisted: Cell<Option<u64>>,
    flushing: Cell<bool>,
    failed: RefCell<Option<String>>,
    waiters: RefCell<Vec<Waker>>,
    flushes: Cell<u64>,
}

impl DurableLog {
    /// Opens (or creates) the log at `path`, recovers its valid records and cuts the file after
    /// the last one (the cut is synced before anything is appended).
    ///
    /// # Errors
    ///
    /// [`LogError::Open`].
    pub async fn open(path: &Path) -> Result<(Rc<Self>, Recovered), LogError> {
        let open_err = |reason: String| LogError::Open { path: path.display().to_string(), reason };
        let file = File::open_with(path, libc::O_RDWR | libc::O_CREAT, 0o644).map_err(|e| open_err(e.to_string()))?;
        let len = file.file_len().map_err(|e| open_err(e.to_string()))?;
        let len_usize = usize::try_from(len).map_err(|_| open_err("larger than memory".into()))?;
        let mut bytes = Vec::with_capacity(len_usize);
        let mut buf = AlignedBuf::zeroed(1 << 20);
        while (bytes.len() as u64) < len {
            let (r, b) = file.read_at(buf, bytes.len() as u64).await;
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf.spare_full()[..n]),
                Err(e) => return Err(open_err(format!("read: {e}"))),
            }
        }
        let scan = record::scan(&bytes);
        let valid = scan.valid_len as u64;
        // Zeros after the last record are the log's end (written ahead; see the module doc) and
        // stay; anything else after it is damage, cut.
        let allocated = if scan.damage.is_some() {
            file.set_len(valid).map_err(|e| open_err(format!("cut at {valid}: {e}")))?;
            file.sync_all().await.map_err(|e| open_err(format!("sync after the cut: {e}")))?;
            valid
        } else {
            len
        };
        let records: Vec<(u64, u64, Vec<u8>)> = scan
            .records
            .iter()
            .map(|r| (r.version, r.hlc, bytes[r.payload_offset..r.payload_offset + r.payload_len].to_vec()))
            .collect();
        let last = scan.records.last().map(|r| (r.version, r.hlc));
        let log = Rc::new(Self {
            path: path.to_path_buf(),
            file,
            end: Cell::new(valid),
            allocated: Cell::new(allocated),
            no_zeros: Cell::new(false),
            pending: RefCell::new(Vec::new()),
            last: Cell::new(last),
            pending_last: Cell::new(None),
            persisted: Cell::new(last.map(|(v, _)| v)),
            flushing: Cell::new(false),
            failed: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            flushes: Cell::new(0),
        });
        Ok((log, Recovered { records, damage: scan.damage, cut: len - allocated }))
    }

    /// Creates a new, empty log at `path`; fails if a file is already there (a log of an
    /// earlier run is opened with [`DurableLog::open`] and recovered, never overwritten).
    ///
    /// # Errors
    ///
    /// [`LogError::Open`]: the file exists, or cannot be created.
    pub fn create(path: &Path) -> Result<Rc<Self>, LogError> {
        let err = |reason: String| LogError::Open { path: path.display().to_string(), reason };
        let file = File::open_with(path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o644)
            .map_err(|e| err(e.to_string()))?;
        // The new name must be durable too: a synced file whose directory entry is lost after a
        // crash is a lost log.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err(format!("sync of its directory: {e}")))?;
        Ok(Rc::new(Self {
            path: path.to_path_buf(),
            file,
            end: Cell::new(0),
            allocated: Cell::new(0),
            no_zeros: Cell::new(false),
            pending: RefCell::new(Vec::new()),
            last: Cell::new(None),
            pending_last: Cell::new(None),
            persisted: Cell::new(None),
            flushing: Cell::new(false),
            failed: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            flushes: Cell::new(0),
        }))
    }

    /// The last version appended (durable or not).
    pub fn last_appended(&self) -> Option<u64> {
        self.last.get().map(|(v, _)| v)
    }

    fn failed(&self) -> Option<LogError> {
        self.failed
            .borrow()
            .as_ref()
            .map(|reason| LogError::Failed { path: self.path.display().to_string(), reason: reason.clone() })
    }

    /// Appends a record (in memory; [`DurableLog::persist`] makes it durable).
    ///
    /// # Errors
    ///
    /// [`LogError`]: the version or time does not go forward, the payload is too large, or the
    /// log has failed.
    pub fn append(&self, version: u64, hlc: u64, payload: &[u8]) -> Result<(), LogError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if payload.len() > record::PAYLOAD_LEN_MAX {
            return Err(LogError::TooLarge(payload.len()));
        }
        if let Some((last, last_hlc)) = self.last.get()
            && (version <= last || hlc < last_hlc)
        {
            return Err(LogError::OutOfOrder { version, hlc, last, last_hlc });
        }
        record::encode(&mut self.pending.borrow_mut(), version, hlc, payload);
        self.last.set(Some((version, hlc)));
        self.pending_last.set(Some(version));
        Ok(())
    }

    /// The last version durable on disk.
    pub fn persisted(&self) -> Option<u64> {
        self.persisted.get()
    }

    /// How many write-and-sync rounds have run (each covers every record appended before it).
    pub fn flushes(&self) -> u64 {
        self.flushes.get()
    }

    /// Waits until `version` (and everything before it) is durable, writing and syncing what
    /// was appended; callers waiting together share the rounds.
    ///
    /// # Errors
    ///
    /// [`LogError::Failed`] if a write or sync failed (now or before): `version` may not be
    /// durable, and nothing after it ever will be.
    ///
    /// # Panics
    ///
    /// If `version` was never appended (a programmer error).
    pub async fn persist(&self, version: u64) -> Result<(), LogError> {
        assert!(self.last.get().is_some_and(|(v, _)| v >= version), "version {version} was never appended");
        loop {
            if let Some(e) = self.failed() {
                return Err(e);
            }
            if self.persisted.get().is_some_and(|p| p >= version) {
                return Ok(());
            }
            if self.flushing.get() {
                // Another caller's round is under way: wait for it, then look again.
                let mut waited = false;
                poll_fn(|cx| {
                    if waited || !self.flushing.get() {
                        return Poll::Ready(());
                    }
                    waited = true;
                    self.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                })
                .await;
                continue;
            }
            self.flush().await;
        }
    }

    /// One round: write everything appended (with zeros ahead if it reaches the file's end and
    /// is small), then `fdatasync`.
    async fn flush(&self) {
        let bytes = std::mem::take(&mut *self.pending.borrow_mut());
        let Some(covers) = self.pending_last.take() else { return };
        self.flushing.set(true);
        let at = self.end.get();
        let len = bytes.len() as u64;
        let ahead = at + len > self.allocated.get() && bytes.len() <= ZEROS_AHEAD_ROUND_MAX && !self.no_zeros.get();
        let (mut allocated, buf) = if ahead {
            let allocated = (at + len + ZEROS_AHEAD).next_multiple_of(4096);
            let mut buf = AlignedBuf::zeroed((allocated - at) as usize);
            buf[..bytes.len()].copy_from_slice(&bytes);
            (allocated, buf)
        } else {
            (self.allocated.get().max(at + len), AlignedBuf::from_slice(&bytes))
        };
        let mut written = self.file.write_all_at(buf, at).await;
        if let Err(e) = &written
            && ahead
        {
            // The zeros ahead did not fit (a nearly full disk): the records alone may. A write
            // error is reported when the write is made (unlike a sync's, which may have dropped
            // pages): nothing written is trusted before the sync below, so writing the records
            // again is safe. The zeros that fit are cut (the disk's last bytes are the
            // member's other files'), and this log writes no more zeros ahead.
            tracing::warn!(path = %self.path.display(), error = %e, "no room for zeros ahead of the log");
            self.no_zeros.set(true);
            allocated = at + len;
            if let Err(e) = self.file.set_len(allocated) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot cut the zeros ahead of the log");
            }
            written = self.file.write_all_at(AlignedBuf::from_slice(&bytes), at).await;
        }
        let result = match written {
            Ok(_) => self.file.sync_data().await.map_err(|e| format!("fdatasync: {e}")),
            Err(e) => Err(format!("write of {len} bytes at {at}: {e}")),
        };
        match result {
            Ok(()) => {
                self.end.set(at + len);
                self.allocated.set(allocated);
                self.persisted.set(Some(covers));
            }
            Err(reason) => {
                tracing::error!(path = %self.path.display(), %reason, "the log failed");
                self.failed.borrow_mut().get_or_insert(reason);
            }
        }
        self.flushes.set(self.flushes.get() + 1);
        self.flushing.set(false);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}
