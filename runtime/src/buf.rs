//! Aligned byte buffers.
//!
//! rkyv validates archived data in place and needs its buffers aligned; a buffer shifted by one
//! byte fails validation (FINDINGS.md). Every buffer that receives foreign bytes is therefore an
//! [`AlignedBuf`], aligned to [`BUF_ALIGN`] bytes.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

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
    #[should_panic(expected = "above capacity")]
    fn set_len_beyond_capacity_panics() {
        AlignedBuf::with_capacity(0, 8).set_len(9);
    }
}
