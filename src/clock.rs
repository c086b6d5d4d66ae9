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

/// The second a TTL counts from: the current time rounded *up* to a whole
/// second. A key stored at 10.95 s with a TTL of 1 s then expires at 12 s,
/// not at 11 s (50 ms later): it is never gone before its TTL has passed
/// since the request arrived, and at most a second after.
pub fn ttl_base_secs() -> u32 {
    let millis = now_millis();
    (millis.div_ceil(1000)).min(u128::from(u32::MAX)) as u32
}

/// Milliseconds since the Unix epoch, for unique object names.
pub fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
