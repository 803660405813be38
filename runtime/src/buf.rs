//! Aligned byte buffers.
//!
//! rkyv validates archived data in place and needs its buffers aligned; a buffer shifted by one
//! byte fails validation (FINDINGS.md). Every buffer that receives foreign bytes is therefore an
//! [`AlignedBuf`], aligned to [`BUF_ALIGN`] bytes.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;

/// Alignment, in bytes, of every [`AlignedBuf`].
pub const BUF_ALIGN: usize = 64;

/// A type with the buffer alignment, for the dangling pointer of empty buffers.
#[repr(align(64))]
#[allow(dead_code)] // only its alignment is used
struct Align([u8; BUF_ALIGN]);

/// A heap buffer of fixed capacity whose start is aligned to [`BUF_ALIGN`] bytes.
///
/// It has a length (the initialised, visible part) and a capacity, like a `Vec<u8>` that never
/// reallocates. New buffers are zeroed, so every byte up to the capacity is initialised.
///
/// # Examples
///
/// ```
/// use derecho_runtime::AlignedBuf;
/// let mut buf = AlignedBuf::zeroed(100);
/// buf[..5].copy_from_slice(b"hello");
/// assert_eq!(&buf[..5], b"hello");
/// assert_eq!(buf.as_ptr() as usize % derecho_runtime::buf::BUF_ALIGN, 0);
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (its capacity is `len`).
    pub fn zeroed(len: usize) -> Self {
        Self::with_capacity(len, len)
    }

    /// A zeroed buffer of `capacity` bytes whose visible length is `len`.
    ///
    /// # Panics
    ///
    /// If `len > capacity` or the allocation fails.
    pub fn with_capacity(len: usize, capacity: usize) -> Self {
        assert!(len <= capacity, "length {len} above capacity {capacity}");
        if capacity == 0 {
            return Self { ptr: NonNull::<Align>::dangling().cast(), len: 0, capacity: 0 };
        }
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        Self { ptr, len, capacity }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = Self::zeroed(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, BUF_ALIGN).expect("buffer capacity overflows a Layout")
    }

    /// The visible length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the visible length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity, fixed at allocation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the visible length.
    ///
    /// # Panics
    ///
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "length {len} above capacity {}", self.capacity);
        self.len = len;
    }

    /// The whole capacity as a mutable slice (every byte is initialised).
    pub fn spare_full(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `capacity` initialised bytes (zeroed at allocation) and we
        // hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// A raw pointer to the start, for io_uring operations that own the buffer.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.capacity != 0 {
            // SAFETY: allocated in `with_capacity` with exactly this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) }
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len <= capacity` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len <= capacity` initialised bytes, and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut copy = Self::with_capacity(self.len, self.capacity.max(self.len));
        copy.copy_from_slice(self);
        copy
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).field("capacity", &self.capacity).finish()
    }
}

// SAFETY: the buffer is uniquely owned heap memory, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

/// A pool of [`AlignedBuf`]s in power-of-two size classes, so that receiving a frame reuses a
/// buffer instead of allocating (and zeroing, and faulting in) a new one.
///
/// Single-threaded by design (`Rc`): one pool per executor or per transport.
///
/// # Examples
///
/// ```
/// use derecho_runtime::buf::BufPool;
/// let pool = BufPool::new(16 << 20);
/// let a = pool.get(100_000);
/// let first = a.as_ptr();
/// drop(a);
/// let b = pool.get(120_000); // same size class: the buffer comes back
/// assert_eq!(b.as_ptr(), first);
/// assert_eq!(b.len(), 120_000);
/// ```
#[derive(Clone)]
pub struct BufPool {
    inner: Rc<PoolInner>,
}

struct PoolInner {
    classes: RefCell<Vec<Vec<AlignedBuf>>>,
    /// Bytes kept per size class.
    kept_len_max: usize,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept: usize = self.inner.classes.borrow().iter().flatten().map(AlignedBuf::capacity).sum();
        f.debug_struct("BufPool").field("kept_len", &kept).finish()
    }
}

/// Smallest pooled class: 64 bytes (small frames stay cheap to allocate when detached).
const CLASS_MIN: u32 = 6;

fn class_of(len: usize) -> u32 {
    len.max(1).next_power_of_two().trailing_zeros().max(CLASS_MIN)
}

impl BufPool {
    /// A pool keeping at most `kept_len_max` bytes of free buffers per size class (and always at
    /// least two buffers, so that a steady stream of large frames reuses them).
    pub fn new(kept_len_max: usize) -> Self {
        Self { inner: Rc::new(PoolInner { classes: RefCell::new(Vec::new()), kept_len_max }) }
    }

    /// A buffer of visible length `len`, from the pool if one is free. Its bytes are whatever a
    /// previous user left (initialised, not necessarily zero): overwrite before exposing them.
    pub fn get(&self, len: usize) -> PooledBuf {
        let class = class_of(len) as usize;
        let reused = self.inner.classes.borrow_mut().get_mut(class).and_then(Vec::pop);
        let mut buf = reused.unwrap_or_else(|| AlignedBuf::with_capacity(0, 1 << class));
        buf.set_len(len);
        PooledBuf { buf: Some(buf), pool: Rc::downgrade(&self.inner) }
    }

    /// Free buffers kept for requests of `len` bytes.
    #[cfg(test)]
    fn kept(&self, len: usize) -> usize {
        self.inner.classes.borrow().get(class_of(len) as usize).map_or(0, Vec::len)
    }

    /// Attaches a buffer taken out with [`PooledBuf::into_inner`] back to this pool.
    pub fn wrap(&self, buf: AlignedBuf) -> PooledBuf {
        PooledBuf { buf: Some(buf), pool: Rc::downgrade(&self.inner) }
    }
}

/// A buffer that returns to its [`BufPool`] when dropped.
pub struct PooledBuf {
    buf: Option<AlignedBuf>,
    pool: std::rc::Weak<PoolInner>,
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf").field("len", &self.len()).finish()
    }
}

impl PooledBuf {
    /// Detaches the buffer from the pool.
    pub fn into_inner(mut self) -> AlignedBuf {
        self.buf.take().expect("buffer present until drop")
    }
}

impl Deref for PooledBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("buffer present until drop")
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.upgrade()) else { return };
        let cap = buf.capacity();
        if !cap.is_power_of_two() || cap < 1 << CLASS_MIN {
            return; // not one of ours (wrapped from elsewhere)
        }
        let class = cap.trailing_zeros() as usize;
        let mut classes = pool.classes.borrow_mut();
        if classes.len() <= class {
            classes.resize_with(class + 1, Vec::new);
        }
        let list = &mut classes[class];
        if list.len() < 2 || (list.len() + 1) * cap <= pool.kept_len_max {
            list.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0, 1, 15, 16, 17, 4096, 1 << 20] {
            let mut buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_mut_ptr() as usize % BUF_ALIGN, 0, "len {len}");
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn set_len_within_capacity() {
        let mut buf = AlignedBuf::with_capacity(0, 32);
        buf.spare_full()[..3].copy_from_slice(b"abc");
        buf.set_len(3);
        assert_eq!(&buf[..], b"abc");
        let copy = buf.clone();
        assert_eq!(&copy[..], b"abc");
    }

    #[test]
    fn pool_reuses_by_class_and_bounds_what_it_keeps() {
        let pool = BufPool::new(64 << 10);
        let a = pool.get(10);
        assert_eq!((a.len(), a.capacity()), (10, 64));
        let b = pool.get(3000);
        assert_eq!((b.len(), b.capacity()), (3000, 4096));
        let pb = b.as_ptr();
        drop(b);
        assert_eq!(pool.get(4000).as_ptr(), pb);
        // 1 MiB class: at least two kept even above the byte bound, not more. (Counted in the
        // pool: the addresses of buffers it freed may come back from the allocator.)
        let bufs: Vec<_> = (0..4).map(|_| pool.get(1 << 20)).collect();
        let ptrs: Vec<_> = bufs.iter().map(|b| b.as_ptr()).collect();
        drop(bufs);
        assert_eq!(pool.kept(1 << 20), 2);
        let again: Vec<_> = (0..2).map(|_| pool.get(1 << 20)).collect();
        assert!(again.iter().all(|b| ptrs.contains(&b.as_ptr())), "the kept buffers are handed out first");
        assert_eq!(pool.kept(1 << 20), 0);
        let detached = pool.get(100).into_inner();
        assert_eq!(detached.len(), 100);
    }

    #[test]
    #[should_panic(expected = "above capacity")]
    fn set_len_beyond_capacity_panics() {
        AlignedBuf::with_capacity(0, 8).set_len(9);
    }
}
