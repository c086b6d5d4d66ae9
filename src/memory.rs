//! Memory for the range tables, and giving freed memory back to the OS.
//!
//! glibc's malloc keeps freed memory in its arenas unless it sits at the
//! very top of a heap, and from the first large block freed it serves
//! blocks up to 32 MiB from the arenas too (its mmap threshold rises to the
//! size freed). A table grows by allocating a larger array and freeing the
//! old one, so its freed arrays stayed in the range threads' arenas as
//! holes too small for the next, larger arrays: 0.8 GB (8 bytes per key)
//! at 100 M keys on one node. Two tools here:
//!
//! - [`ZeroedArray`]: a table's slot array of [`MAPPED_BYTES`] or more is
//!   its own anonymous mapping, so freeing it frees the memory, and RSS
//!   follows the tables. Only these arrays bypass malloc: fixing glibc's
//!   threshold for the whole process instead (`M_MMAP_THRESHOLD`) did the
//!   same for the tables, but made every large transient buffer (a
//!   segment being decoded, a checkpoint being written) a fresh mapping
//!   to fault in, where the arenas reuse them: a restart took 35-60 %
//!   more CPU.
//! - [`release_freed`]: when the sweep shrinks a table, the arrays it frees
//!   below [`MAPPED_BYTES`] stay in the arenas; `malloc_trim` returns every
//!   free page of every arena. It locks each arena briefly, so it runs at
//!   most once per [`MIN_INTERVAL`].

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Arrays of this many bytes or more get their own mapping.
pub const MAPPED_BYTES: usize = 128 << 10;

/// Types whose all-zero bytes are a valid value.
///
/// # Safety
///
/// Implement it only for types for which that holds (integers, and
/// structs and arrays of them).
pub unsafe trait Zeroable: Copy {}

/// A fixed-length array of `T`, zeroed when made; one of
/// [`MAPPED_BYTES`] or more is its own anonymous mapping (on Linux), whose
/// pages the kernel zeroes on first touch and takes back when it is
/// dropped.
pub struct ZeroedArray<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
    /// Whether `ptr` is a mapping of its own, rather than from malloc.
    mapped: bool,
}

// SAFETY: it owns its elements, as a `Box<[T]>` does.
unsafe impl<T: Zeroable + Send> Send for ZeroedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Zeroable + Sync> Sync for ZeroedArray<T> {}

impl<T: Zeroable> ZeroedArray<T> {
    /// `len` zeroed elements.
    pub fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return ZeroedArray { ptr: NonNull::dangling(), len, mapped: false };
        }
        if layout.size() >= MAPPED_BYTES {
            if let Some(ptr) = map(layout.size()) {
                return ZeroedArray { ptr: ptr.cast(), len, mapped: true };
            }
            // No mapping (the process's map count is at its limit): malloc's.
        }
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        match NonNull::new(ptr.cast::<T>()) {
            Some(ptr) => ZeroedArray { ptr, len, mapped: false },
            None => std::alloc::handle_alloc_error(layout),
        }
    }

    fn layout(len: usize) -> Layout {
        match Layout::array::<T>(len) {
            Ok(layout) => layout,
            Err(_) => panic!("an array of {len} elements of {} bytes overflows", std::mem::size_of::<T>()),
        }
    }

    /// A copy with `len` elements: the first ones of `self`, then zeroes.
    pub fn resized(&self, len: usize) -> Self {
        let mut new = Self::new(len);
        let keep = len.min(self.len);
        new[..keep].copy_from_slice(&self[..keep]);
        new
    }

    /// Bytes it holds.
    pub fn heap_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T: Zeroable> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() == 0 {
            return;
        }
        if self.mapped {
            unmap(self.ptr.cast(), layout.size());
        } else {
            // SAFETY: allocated by `alloc_zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<T: Zeroable> std::ops::Deref for ZeroedArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised elements (zeroes are valid
        // `T`s), or is dangling with a size of zero.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> std::ops::DerefMut for ZeroedArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Clone for ZeroedArray<T> {
    fn clone(&self) -> Self {
        self.resized(self.len)
    }
}

impl<T: Zeroable + std::fmt::Debug> std::fmt::Debug for ZeroedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(target_os = "linux")]
fn map(bytes: usize) -> Option<NonNull<u8>> {
    // SAFETY: a new private anonymous mapping aliases nothing; its pages
    // read as zero.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(ptr.cast())
}

#[cfg(not(target_os = "linux"))]
fn map(_: usize) -> Option<NonNull<u8>> {
    None
}

#[cfg(target_os = "linux")]
fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: `ptr` and `bytes` are a whole mapping made by `map`, and no
    // reference into it outlives the array that owned it.
    if unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) } != 0 {
        log::error!("munmap of {bytes} bytes failed: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn unmap(_: NonNull<u8>, _: usize) {
    unreachable!("nothing is mapped off Linux");
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);
/// Milliseconds since `START` of the last trim, plus one (0: never).
static LAST: AtomicU64 = AtomicU64::new(0);

/// Returns freed memory to the OS, unless that was done less than
/// [`MIN_INTERVAL`] ago.
pub fn release_freed() {
    let now = START.elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now < last + MIN_INTERVAL.as_millis() as u64 {
        return;
    }
    if LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    // SAFETY: integers.
    unsafe impl Zeroable for u64 {}

    #[test]
    fn arrays_are_zeroed_resized_and_mapped_when_large() {
        for len in [0, 1, 1000, MAPPED_BYTES / 8, 1 << 20] {
            let mut a = ZeroedArray::<u64>::new(len);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&x| x == 0));
            assert_eq!(a.mapped, cfg!(target_os = "linux") && len * 8 >= MAPPED_BYTES, "{len}");
            for (i, x) in a.iter_mut().enumerate() {
                *x = i as u64 + 1;
            }
            let longer = a.resized(len + 10);
            assert!(longer[..len].iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
            assert!(longer[len..].iter().all(|&x| x == 0));
            let shorter = longer.resized(len / 2);
            assert_eq!(&shorter[..], &a[..len / 2]);
            assert_eq!(&a.clone()[..], &a[..]);
        }
    }
}
