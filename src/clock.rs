//! Wall-clock seconds, the unit of every expiry.
//!
//! Kept in one place so that actors take `now` once per request and pass it
//! down: the table itself never reads the clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch. Expiries are `u32`, which lasts until 2106.
pub fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, for unique object names.
pub fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
