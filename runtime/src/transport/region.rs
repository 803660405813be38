//! Registered regions: memory that peers write into with pushes.
//!
//! A mapped region's bytes can change at any time under the reader: on shared memory another
//! process stores into them, and later an RDMA NIC will. Access to them therefore goes through
//! atomic loads and stores (relaxed per word, with an acquire/release pair on the counter that
//! publishes the data), never through plain references, so there is no data race in the Rust
//! sense even though the writer is another process. A heap region (TCP) is written only by the
//! transport on the executor's own thread; `Region` is neither `Send` nor `Sync`, so its bulk
//! copies are plain `memcpy`. A backing that a device or another thread writes must not be a
//! heap region (see `is_local`).
//!
//! The reading rule that makes pushes useful: load the counter with [`Region::load_u64`]
//! (acquire), then read the data it covers with [`Region::read`].

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering, fence};

use super::RegionId;
use crate::buf::AlignedBuf;

enum Backing {
    Heap(#[allow(dead_code)] AlignedBuf),
    Mapped(#[allow(dead_code)] memmap2::MmapRaw),
}

/// A registered region: `len` bytes at an address aligned to at least 64 bytes.
pub struct Region {
    id: RegionId,
    ptr: NonNull<u8>,
    len: usize,
    _backing: Backing,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("id", &self.id).field("len", &self.len).finish()
    }
}

impl Region {
    pub(crate) fn heap(id: RegionId, len: usize) -> Self {
        let mut buf = AlignedBuf::zeroed(len.max(8));
        let ptr = NonNull::new(buf.as_mut_ptr()).expect("allocation is non-null");
        Self { id, ptr, len, _backing: Backing::Heap(buf) }
    }

    /// A region over `len` bytes of a mapping, starting at `offset`.
    pub(crate) fn mapped(id: RegionId, map: memmap2::MmapRaw, offset: usize, len: usize) -> Self {
        assert!(offset + len <= map.len(), "region outside its mapping");
        // SAFETY: `offset + len` is inside the mapping (checked above).
        let ptr = unsafe { map.as_mut_ptr().add(offset) };
        assert_eq!(ptr as usize % 64, 0, "mapped region not 64-byte aligned");
        Self { id, ptr: NonNull::new(ptr).expect("mapping is non-null"), len, _backing: Backing::Mapped(map) }
    }

    /// The id.
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether only this thread ever touches the bytes: a heap region (TCP), written by the
    /// transport on the executor's thread and never shared with another process. `Region` is
    /// neither `Send` nor `Sync`, so such a region cannot be reached from another thread, and
    /// plain copies are sound; mapped regions (shared memory, later RDMA) take the atomic path.
    fn is_local(&self) -> bool {
        matches!(self._backing, Backing::Heap(_))
    }

    /// Appends the `len` bytes at `offset` to `out`.
    ///
    /// # Panics
    ///
    /// If the range is outside the region.
    pub fn append_to(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        self.check(offset, len);
        if self.is_local() {
            out.reserve(len);
            // SAFETY: the source range is inside the region (checked) and no other thread or
            // process accesses a local region (see `is_local`); the destination is `len` bytes of
            // reserved capacity, which the copy initialises before `set_len` covers it.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr().add(out.len()), len);
                out.set_len(out.len() + len);
            }
        } else {
            let at = out.len();
            out.resize(at + len, 0);
            self.read(offset, &mut out[at..]);
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}+{len} outside region {:?} of {} bytes",
            self.id,
            self.len
        );
    }

    /// Copies `src` into the region at `offset` (a local write, typically of this member's row).
    ///
    /// # Panics
    ///
    /// If the range is outside the region (a programmer error).
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        if self.is_local() {
            // SAFETY: the range is inside the region (checked); nothing else accesses a local
            // region concurrently (see `is_local`), and `src` cannot overlap it (a shared borrow
            // of the region's bytes never coexists with this call on the one thread).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) }
        } else {
            // SAFETY: the range is inside the region (checked).
            unsafe { copy_to_shared(self.ptr.as_ptr().add(offset), src) }
        }
    }

    /// Copies bytes at `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// If the range is outside the region.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        if self.is_local() {
            // SAFETY: as in `write`.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) }
        } else {
            // SAFETY: the range is inside the region (checked).
            unsafe { copy_from_shared(dst, self.ptr.as_ptr().add(offset)) }
        }
    }

    /// Copies `range` out into a new vector.
    pub fn to_vec(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(offset, &mut v);
        v
    }

    /// Loads the little-endian `u64` at `offset` with acquire ordering: data pushed before it is
    /// visible after it.
    ///
    /// # Panics
    ///
    /// If `offset` is not 8-byte aligned or is outside the region.
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Stores a `u64` at `offset` with release ordering.
    ///
    /// # Panics
    ///
    /// If `offset` is not 8-byte aligned or is outside the region.
    pub fn store_u64(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Release);
    }

    /// Borrows bytes of the region directly.
    ///
    /// # Safety
    ///
    /// Nobody may write the range while the borrow lives: not this process (no
    /// [`Region::write`] or mutable borrow of an overlapping range), and not a peer (the
    /// protocol using the region must guarantee that peers leave the range alone, as
    /// Derecho's flow control does for a message until every member delivered it).
    ///
    /// # Panics
    ///
    /// If the range is outside the region.
    pub unsafe fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.check(range.start, range.len());
        // SAFETY: in bounds (checked); no concurrent writer (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), range.len()) }
    }

    /// Borrows bytes of the region for writing.
    ///
    /// # Safety
    ///
    /// Nobody else may read or write the range while the borrow lives: in practice the range is
    /// part of this process's own row, which peers never write, and which they see only through
    /// pushes made after the borrow ends.
    ///
    /// # Panics
    ///
    /// If the range is outside the region.
    #[allow(clippy::mut_from_ref)] // the region is shared memory; exclusivity is the caller's contract
    pub unsafe fn bytes_mut(&self, range: std::ops::Range<usize>) -> &mut [u8] {
        self.check(range.start, range.len());
        // SAFETY: in bounds (checked); exclusive access (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(range.start), range.len()) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert_eq!(offset % 8, 0, "u64 at unaligned offset {offset}");
        self.check(offset, 8);
        // SAFETY: in bounds and 8-byte aligned (the base is 64-byte aligned); the memory is only
        // ever accessed atomically.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }
}

/// The byte at `p`, as an atomic.
///
/// # Safety
///
/// `p` must be valid for the lifetime of the use and only ever accessed atomically.
unsafe fn byte<'a>(p: *mut u8) -> &'a AtomicU8 {
    // SAFETY: forwarded from the caller; `AtomicU8` has the size and alignment of `u8`.
    unsafe { AtomicU8::from_ptr(p) }
}

/// The word at `p`, as an atomic.
///
/// # Safety
///
/// `p` must be 8-byte aligned, valid for the lifetime of the use and only ever accessed
/// atomically.
unsafe fn word<'a>(p: *mut u8) -> &'a AtomicU64 {
    // SAFETY: forwarded from the caller.
    unsafe { AtomicU64::from_ptr(p.cast()) }
}

/// Copies into memory that other threads or processes may read concurrently: a release fence,
/// then relaxed atomic stores (words where aligned).
///
/// # Safety
///
/// `dst..dst+src.len()` must be valid for writes, and only ever accessed atomically.
pub(crate) unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
    fence(Ordering::Release);
    let n = src.len();
    let mut i = 0;
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: `i < n`, inside the caller's range.
        unsafe { byte(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        let w = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
        // The last whole word is stored with release ordering (a trailing counter publishes the
        // bytes before it).
        let order = if i + 8 == n { Ordering::Release } else { Ordering::Relaxed };
        // SAFETY: `i + 8 <= n`, inside the caller's range, and `dst + i` is 8-byte aligned.
        unsafe { word(dst.add(i)) }.store(w, order);
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the caller's range.
        unsafe { byte(dst.add(i)) }.store(src[i], Ordering::Relaxed);
        i += 1;
    }
}

/// Copies out of memory that others may write concurrently: relaxed atomic loads, then an acquire
/// fence.
///
/// # Safety
///
/// `src..src+dst.len()` must be valid for reads, and only ever accessed atomically.
pub(crate) unsafe fn copy_from_shared(dst: &mut [u8], src: *const u8) {
    let src = src.cast_mut();
    let n = dst.len();
    let mut i = 0;
    while i < n && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: `i < n`, inside the caller's range (only loaded from).
        dst[i] = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`, inside the caller's range, and `src + i` is 8-byte aligned.
        let w = unsafe { word(src.add(i)) }.load(Ordering::Relaxed);
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`, inside the caller's range.
        dst[i] = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
        i += 1;
    }
    fence(Ordering::Acquire);
}

/// Copies between two shared regions (a push on shared memory).
///
/// # Safety
///
/// Both ranges valid for `len` bytes and only ever accessed atomically; they do not overlap.
pub(crate) unsafe fn copy_shared_to_shared(dst: *mut u8, src: *const u8, len: usize) {
    fence(Ordering::Release);
    let src = src.cast_mut();
    let mut i = 0;
    // Pushes copy the same offset of two 64-byte aligned regions, so both sides share their
    // alignment and the word loop applies; otherwise fall back to bytes.
    if (dst as usize) % 8 == (src as usize) % 8 {
        while i < len && !(dst as usize + i).is_multiple_of(8) {
            // SAFETY: `i < len`, inside both ranges.
            let b = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { byte(dst.add(i)) }.store(b, Ordering::Relaxed);
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len`, inside both ranges, both addresses 8-byte aligned.
            let w = unsafe { word(src.add(i)) }.load(Ordering::Relaxed);
            // The last whole word of a push is stored with release ordering: a counter at the end
            // of a range is published after the data before it, even within one push.
            let order = if i + 8 == len { Ordering::Release } else { Ordering::Relaxed };
            // SAFETY: as above.
            unsafe { word(dst.add(i)) }.store(w, order);
            i += 8;
        }
    }
    while i < len {
        // SAFETY: `i < len`, inside both ranges.
        let b = unsafe { byte(src.add(i)) }.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { byte(dst.add(i)) }.store(b, Ordering::Relaxed);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_at_every_alignment() {
        let r = Region::heap(RegionId(1), 256);
        for off in 0..17 {
            for len in [0, 1, 7, 8, 9, 31, 64] {
                let src: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(off as u8)).collect();
                r.write(off, &src);
                assert_eq!(r.to_vec(off, len), src, "off {off} len {len}");
            }
        }
    }

    #[test]
    fn words_and_bytes_agree() {
        let r = Region::heap(RegionId(0), 64);
        r.store_u64(8, 0x0102_0304_0506_0708);
        assert_eq!(r.to_vec(8, 8), 0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(r.load_u64(8), 0x0102_0304_0506_0708);
    }

    #[test]
    #[should_panic(expected = "outside region")]
    fn out_of_bounds_write_panics() {
        Region::heap(RegionId(0), 16).write(10, &[0; 8]);
    }

    #[test]
    fn shared_to_shared_copy() {
        let a = Region::heap(RegionId(0), 100);
        let b = Region::heap(RegionId(0), 100);
        let data: Vec<u8> = (0..100).map(|i| i as u8).collect();
        a.write(0, &data);
        // SAFETY: both regions are 100 bytes long.
        unsafe { copy_shared_to_shared(b.as_ptr().add(3), a.as_ptr().add(3), 90) };
        assert_eq!(b.to_vec(3, 90), data[3..93]);
        assert_eq!(b.to_vec(0, 3), [0, 0, 0]);
    }
}
