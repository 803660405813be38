//! Files driven by io_uring: positional reads and writes and syncs, each owning its buffer.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use io_uring::{opcode, types};

use crate::buf::AlignedBuf;
use crate::net::IoBuf;
use crate::op::Op;

/// An open file.
#[derive(Debug)]
pub struct File {
    fd: OwnedFd,
}

impl File {
    /// Opens with `open(2)` flags (`O_CLOEXEC` is added) and mode.
    ///
    /// # Errors
    ///
    /// The open error, naming the path.
    pub fn open_with(path: &Path, flags: i32, mode: u32) -> io::Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: `c` is a valid C string; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open {}: {e}", path.display())));
        }
        // SAFETY: fresh descriptor.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Creates (or truncates) a file for reading and writing.
    ///
    /// # Errors
    ///
    /// The open error, naming the path.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::open_with(path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644)
    }

    /// Opens an existing file for reading and writing.
    ///
    /// # Errors
    ///
    /// The open error, naming the path.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, libc::O_RDWR, 0)
    }

    /// Writes `buf` at `offset`; returns the count written (maybe short) and the buffer.
    pub async fn write_at<B: IoBuf>(&self, buf: B, offset: u64) -> (io::Result<usize>, B) {
        let fd = self.fd.as_raw_fd();
        let len = buf.bytes_len().min(u32::MAX as usize) as u32;
        // SAFETY: the pointer is into `buf`'s stable heap memory, owned by the operation.
        let op = unsafe {
            Op::submit(buf, |b| opcode::Write::new(types::Fd(fd), b.stable_ptr(), len).offset(offset).build())
        };
        let done = op.await;
        (done.result.map(|n| n as usize), done.data)
    }

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    ///
    /// The write error; `WriteZero` if the file stopped taking bytes (a full disk reports
    /// `StorageFull` instead).
    pub async fn write_all_at(&self, buf: AlignedBuf, offset: u64) -> io::Result<AlignedBuf> {
        let total = buf.len();
        let (res, buf) = self.write_at(buf, offset).await;
        let mut written = res?;
        // Short writes are rare (a signal, a nearly full disk): finish with copies of the rest.
        while written < total {
            let rest = AlignedBuf::from_slice(&buf[written..]);
            let (res, _) = self.write_at(rest, offset + written as u64).await;
            match res? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n,
            }
        }
        Ok(buf)
    }

    /// Reads into `buf` (its whole capacity) at `offset`; returns the count read (0 at end of
    /// file) and the buffer, whose visible length is set to the count.
    pub async fn read_at(&self, buf: AlignedBuf, offset: u64) -> (io::Result<usize>, AlignedBuf) {
        let fd = self.fd.as_raw_fd();
        let cap = buf.capacity().min(u32::MAX as usize) as u32;
        // SAFETY: the pointer is into `buf`'s heap memory, owned by the operation.
        let op = unsafe {
            Op::submit(buf, |b| opcode::Read::new(types::Fd(fd), b.as_mut_ptr(), cap).offset(offset).build())
        };
        let done = op.await;
        let mut buf = done.data;
        let res = done.result.map(|n| n as usize);
        if let Ok(n) = res {
            buf.set_len(n);
        }
        (res, buf)
    }

    /// Sets the file's length (truncating or extending with zeros), synchronously: recovery
    /// cuts a log at its last valid record with it.
    ///
    /// # Errors
    ///
    /// The `ftruncate` error.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The file's length, synchronously.
    ///
    /// # Errors
    ///
    /// The `fstat` error.
    pub fn file_len(&self) -> io::Result<u64> {
        // SAFETY: zeroed stat is a valid out-parameter; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on a descriptor we own, writing into `st`.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.st_size as u64)
    }

    /// `fsync`: data and metadata durable.
    ///
    /// # Errors
    ///
    /// The fsync error. After an fsync error the file's durable state is unknown: do not retry
    /// and trust the retry.
    pub async fn sync_all(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: no buffer.
        let op = unsafe { Op::submit((), |_| opcode::Fsync::new(types::Fd(fd)).build()) };
        op.await.result.map(drop)
    }

    /// `fdatasync`: data durable (metadata only as needed to read it back).
    ///
    /// # Errors
    ///
    /// As [`File::sync_all`].
    pub async fn sync_data(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: no buffer.
        let op =
            unsafe { Op::submit((), |_| opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build()) };
        op.await.result.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Builder;

    #[test]
    fn write_sync_read_back() {
        let dir = std::env::temp_dir().join(format!("derecho-fs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let ex = Builder::new().build().unwrap();
        ex.block_on(async {
            let f = File::create(&path).unwrap();
            let (n, _) = f.write_at(b"hello world".to_vec(), 0).await;
            assert_eq!(n.unwrap(), 11);
            f.write_all_at(AlignedBuf::from_slice(b"WORLD"), 6).await.unwrap();
            f.sync_data().await.unwrap();
            f.sync_all().await.unwrap();
            let (n, buf) = f.read_at(AlignedBuf::zeroed(64), 0).await;
            assert_eq!(n.unwrap(), 11);
            assert_eq!(&buf[..], b"hello WORLD");
            let (n, _) = f.read_at(AlignedBuf::zeroed(64), 100).await;
            assert_eq!(n.unwrap(), 0);
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_missing_names_the_path() {
        let err = File::open(Path::new("/nonexistent/derecho/x")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/derecho/x"), "{err}");
    }
}
