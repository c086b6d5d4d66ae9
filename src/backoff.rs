//! The waits between attempts of a step that keeps failing: a first delay,
//! doubled after each failure up to a cap, optionally shortened at random
//! (jitter) so that many tasks that failed together do not retry together,
//! and back to the first delay after a success.
//!
//! It only computes durations: the caller sleeps (a tokio task, a thread, an
//! actor's timer) and decides what is worth retrying. It holds no clock and
//! no runtime, so its schedule is tested without waiting.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A doubling delay between retries; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// The share of a delay that jitter may take off (0: exact delays).
    /// Jitter only shortens, so the cap holds and a jittered schedule is
    /// never slower than the exact one.
    jitter: f64,
    /// The next delay before jitter.
    next: Duration,
    /// Splitmix64 state for the jitter (no cryptographic need).
    rng: u64,
}

impl Backoff {
    /// Delays `first`, `2 × first`, `4 × first`, ... up to `cap` (a `first`
    /// above `cap` is `cap`), without jitter.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.min(cap);
        // A fresh random seed per instance, from the standard library's
        // per-process random keys: two backoffs do not share a sequence.
        let rng = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Backoff { first, cap, jitter: 0.0, next: first, rng }
    }

    /// Each delay is shortened by a random share of up to `share` (clamped
    /// to 0..=1): with 0.5, a delay `d` becomes one in `d/2 ..= d`.
    pub fn with_jitter(mut self, share: f64) -> Backoff {
        self.jitter = if share.is_nan() { 0.0 } else { share.clamp(0.0, 1.0) };
        self
    }

    /// The delay [`Backoff::next_delay`] returns next, before jitter (the
    /// longest it can be).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The delay to wait before the next attempt; the one after is twice as
    /// long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        self.jittered(delay)
    }

    /// [`Backoff::next_delay`], lengthened to what a server asked for
    /// (`Retry-After`) and still within the cap. The schedule goes on from
    /// its own delays, not from the server's.
    pub fn next_delay_honouring(&mut self, asked: Option<Duration>) -> Duration {
        self.next_delay().max(asked.unwrap_or_default()).min(self.cap)
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        if self.jitter == 0.0 {
            return delay;
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 53 random bits: a uniform share in 0..1.
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(1.0 - self.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_and_stays_there() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        let want: Vec<Duration> = [100, 200, 400, 800, 1000, 1000, 1000].iter().map(|&m| m * MS).collect();
        assert_eq!(delays, want);
    }

    #[test]
    fn reset_starts_from_the_first_delay_again() {
        let mut b = Backoff::new(50 * MS, 1000 * MS);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.peek(), 1000 * MS);
        b.reset();
        assert_eq!(b.peek(), 50 * MS);
        assert_eq!(b.next_delay(), 50 * MS);
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn a_first_delay_above_the_cap_is_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(3));
        assert_eq!(b.next_delay(), Duration::from_secs(3));
        assert_eq!(b.next_delay(), Duration::from_secs(3));
    }

    #[test]
    fn a_huge_cap_saturates_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.peek(), Duration::MAX);
    }

    #[test]
    fn jitter_only_shortens_within_its_share() {
        let mut b = Backoff::new(100 * MS, 800 * MS).with_jitter(0.5);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..200 {
            if round % 5 == 0 {
                b.reset();
            }
            let upper = b.peek();
            let d = b.next_delay();
            assert!(d <= upper && d >= upper / 2, "{d:?} outside {:?}..={upper:?}", upper / 2);
            seen.insert(d);
        }
        // The delays are spread out, not one value per step of the schedule.
        assert!(seen.len() > 50, "only {} distinct delays", seen.len());
        // The schedule under the jitter still doubles to the cap.
        let mut b = Backoff::new(100 * MS, 800 * MS).with_jitter(1.0);
        for _ in 0..10 {
            assert!(b.next_delay() <= 800 * MS);
        }
        assert_eq!(b.peek(), 800 * MS);
    }

    #[test]
    fn two_backoffs_jitter_differently() {
        let draws = |mut b: Backoff| -> Vec<Duration> { (0..8).map(|_| b.next_delay()).collect() };
        let a = draws(Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.5));
        let b = draws(Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(0.5));
        assert_ne!(a, b);
    }

    #[test]
    fn retry_after_lengthens_a_delay_within_the_cap_and_leaves_the_schedule() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        assert_eq!(b.next_delay_honouring(Some(2000 * MS)), 2000 * MS);
        // The schedule went on from its own 100 ms.
        assert_eq!(b.peek(), 200 * MS);
        assert_eq!(b.next_delay_honouring(Some(60_000 * MS)), 5000 * MS);
        assert_eq!(b.next_delay_honouring(Some(MS)), 400 * MS);
        assert_eq!(b.next_delay_honouring(None), 800 * MS);
    }
}
