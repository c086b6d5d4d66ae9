//! Giving freed memory back to the operating system.
//!
//! glibc's malloc keeps freed memory in its arenas unless it sits at the
//! very top of a heap. Two things follow for the range tables, whose slot
//! arrays are the node's memory:
//!
//! - Growth: a part of a table grows by allocating a larger array and
//!   freeing the old one. By default glibc serves an allocation of 128 KiB
//!   or more with its own `mmap` (returned to the OS when freed) only until
//!   the first such block is freed; then it raises that threshold to the
//!   freed size (up to 32 MiB), and the arrays come from the arenas, where
//!   the freed ones stay as holes too small for the next, larger arrays. At
//!   100 M keys on one node that was 0.8 GB (8 bytes per key) held by the
//!   range threads' arenas. [`configure`] fixes the threshold at 128 KiB:
//!   a part's array is its own mapping, and freeing it frees the memory.
//! - Shrinking: the sweep frees slot arrays too, some of them below the
//!   threshold. `malloc_trim` returns every free page of every arena. It
//!   locks each arena briefly, so [`release_freed`] runs it at most once per
//!   [`MIN_INTERVAL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Allocations from this size on get their own mapping, always.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 << 10;

/// Sets the allocator's policy for this process (see the module docs).
/// Call it once, in `main`, before starting threads.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's malloc parameters; setting the
        // threshold also turns off its dynamic adjustment.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if ok != 1 {
            log::warn!("cannot set the allocator's mmap threshold: freed table arrays may stay in RSS");
        }
    }
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
