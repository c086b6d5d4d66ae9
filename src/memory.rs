//! Giving freed memory back to the operating system.
//!
//! When the sweep shrinks a table, its old slot array is freed, but glibc's
//! malloc keeps freed memory in its arenas unless it sits at the very top
//! of a heap; RSS would stay at its peak long after the keys expired.
//! `malloc_trim` returns every free page of every arena. It locks each
//! arena briefly, so it runs at most once per [`MIN_INTERVAL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

const MIN_INTERVAL: Duration = Duration::from_secs(1);

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
