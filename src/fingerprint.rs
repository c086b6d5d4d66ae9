//! Key fingerprints and key → range routing.
//!
//! A key lives inside KeyDB only as its 128-bit fingerprint `xxh3_128(key)`
//! (seed 0), and inside a range only as 96 bits of it ([`TableKey`]) with an
//! [`Expiry`]: memory and snapshot sizes do not depend on key length. The range
//! of a key is fixed forever by `API.md` and computed identically by every
//! client, so this module must never change its arithmetic.

use xxhash_rust::xxh3::xxh3_128;

/// Smallest and largest key length in bytes (API.md).
pub const MIN_KEY_LEN: usize = 1;
pub const MAX_KEY_LEN: usize = 1024;

/// The 128-bit XXH3 hash of a key, seed 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    pub fn of(key: &[u8]) -> Self {
        Fingerprint(xxh3_128(key))
    }

    /// `(fp >> 64) % total_hash_ranges`, as API.md defines it.
    pub fn range(self, total_hash_ranges: u32) -> u32 {
        debug_assert!(total_hash_ranges > 0);
        ((self.0 >> 64) as u64 % u64::from(total_hash_ranges)) as u32
    }
}

/// The part of a fingerprint a range stores (96 bits): what the tables,
/// the WAL and the segments hold. The range (`(fp >> 64) % R`) does not
/// imply these bits for any power-of-two `R` up to 2³²; DESIGN.md asks for at
/// least 96 independent bits. Ordered by `lo`, then `hi`: "fingerprint
/// order", in which tables iterate and segments are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TableKey {
    /// Low 64 bits of the fingerprint; also the hash that places the key
    /// inside its range's table.
    pub lo: u64,
    /// Top 32 bits of the fingerprint.
    pub hi: u32,
}

impl From<Fingerprint> for TableKey {
    fn from(fp: Fingerprint) -> Self {
        TableKey { lo: fp.0 as u64, hi: (fp.0 >> 96) as u32 }
    }
}

/// Absolute expiry in Unix seconds. A key exists iff `now < expiry`.
pub type Expiry = u32;

/// Why a key cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key at position {index} is empty (keys are 1..=1024 bytes)")]
    Empty { index: usize },
    #[error("key at position {index} is {len} bytes (keys are 1..=1024 bytes)")]
    TooLong { index: usize, len: usize },
}

/// Checks a key's length and fingerprints it.
pub fn checked_fingerprint(index: usize, key: &[u8]) -> Result<Fingerprint, KeyError> {
    match key.len() {
        0 => Err(KeyError::Empty { index }),
        len if len > MAX_KEY_LEN => Err(KeyError::TooLong { index, len }),
        _ => Ok(Fingerprint::of(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_md_example() {
        let fp = Fingerprint::of(b"user:123");
        assert_eq!(fp.0, 0x4d7c643ce553682bc1ba8e1c07bfca03);
        assert_eq!(fp.range(128), 43);
        assert_eq!(0x4d7c643ce553682bu64 % 128, 43);
    }

    #[test]
    fn key_limits() {
        assert_eq!(checked_fingerprint(3, b""), Err(KeyError::Empty { index: 3 }));
        assert!(checked_fingerprint(0, &[b'a'; 1024]).is_ok());
        assert_eq!(checked_fingerprint(1, &[b'a'; 1025]), Err(KeyError::TooLong { index: 1, len: 1025 }));
    }

    #[test]
    fn range_is_always_in_bounds() {
        for r in [1u32, 7, 128, 271, 1024] {
            for i in 0..1000u32 {
                assert!(Fingerprint::of(&i.to_le_bytes()).range(r) < r);
            }
        }
    }
}
