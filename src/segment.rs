//! Snapshot segments and manifests: the formats of what a range leaves in the
//! object store (and, for segments, in local checkpoints).
//!
//! A segment holds one range's entries, all of them (`Full`) or those changed
//! since the previous segment (`Incremental`). Layout:
//!
//! ```text
//! "KDBS" | version u8 = 1 | decoded length u64 LE | crc32 (IEEE) of the
//!   decoded length and the zstd frame, u32 LE | zstd frame of bincode 2 (standard config, fixed-width LE
//!   integers) of SegmentBody
//! ```
//!
//! Entries are stored column by column (low fingerprint bits, high bits,
//! expiries), which lets zstd find the regularity of sorted keys and similar
//! expiries. Loading a chain is a max-merge of its segments in any order.
//!
//! A manifest (`manifest.json`, one per range) names a range's chain: the
//! latest full segment first, then the incrementals written since. A segment
//! is always written before the manifest that names it.
//!
//! Decoding never panics: a truncated or corrupt object is an error naming
//! what was wrong, never fewer keys.

use bincode::config::{self, Configuration, Fixint, LittleEndian};
use serde::{Deserialize, Serialize};

use crate::fingerprint::{Expiry, TableKey};

const MAGIC: &[u8; 4] = b"KDBS";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 17;
/// zstd level: fast; fingerprints are random and barely compress anyway.
const ZSTD_LEVEL: i32 = 1;
/// Refuse to inflate a segment beyond this (a corrupt frame must not take
/// the node's memory): 2³¹ entries × 16 bytes.
const MAX_DECODED_BYTES: usize = 32 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    Full,
    Incremental,
}

/// What a segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub range: u32,
    pub total_hash_ranges: u32,
    pub kind: SegmentKind,
    /// Unix seconds when it was taken.
    pub created: u64,
    pub entries: Vec<(TableKey, Expiry)>,
}

#[derive(bincode::Encode, bincode::Decode)]
struct SegmentBody {
    range: u32,
    total_hash_ranges: u32,
    kind: SegmentKind,
    created: u64,
    lo: Vec<u64>,
    hi: Vec<u32>,
    expiry: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

fn checksum(decoded_len: u64, compressed: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&decoded_len.to_le_bytes());
    h.update(compressed);
    h.finalize()
}

fn bincode_config() -> Configuration<LittleEndian, Fixint> {
    config::standard().with_fixed_int_encoding()
}

/// Bytes of the body before its first column: range u32, total u32,
/// kind (variant tag u32), created u64.
const BODY_FIXED: usize = 20;
/// A body is at most this many times its compressed size (see `decode`).
const MAX_RATIO: u64 = 16;

/// Checks that the three column lengths of a body (fixed-width bincode,
/// each a u64 count before its items) agree with each other and with the
/// body's size, so that decoding never sizes a buffer by a hostile count.
fn check_columns(raw: &[u8]) -> Result<(), String> {
    let count_at =
        |at: usize| raw.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let n = count_at(BODY_FIXED).ok_or("body too short")?;
    // lo: n × 8, hi: n × 4, expiry: n × 4, each after an 8-byte count.
    let expected = n.checked_mul(16).and_then(|c| c.checked_add(BODY_FIXED as u64 + 24));
    if expected != Some(raw.len() as u64) {
        return Err(format!("{n} entries announced in a body of {} bytes", raw.len()));
    }
    // n fits in usize now: 16 n is at most the body's length.
    let n = n as usize;
    let hi_at = BODY_FIXED + 8 + 8 * n;
    let expiry_at = hi_at + 8 + 4 * n;
    if count_at(hi_at) != Some(n as u64) || count_at(expiry_at) != Some(n as u64) {
        return Err("columns of different lengths".into());
    }
    Ok(())
}

impl Segment {
    pub fn encode(&self) -> Vec<u8> {
        let body = SegmentBody {
            range: self.range,
            total_hash_ranges: self.total_hash_ranges,
            kind: self.kind,
            created: self.created,
            lo: self.entries.iter().map(|(k, _)| k.lo).collect(),
            hi: self.entries.iter().map(|(k, _)| k.hi).collect(),
            expiry: self.entries.iter().map(|(_, e)| *e).collect(),
        };
        // unwrap: encoding into a Vec cannot fail.
        let raw = bincode::encode_to_vec(&body, bincode_config()).unwrap();
        Self::frame(&raw, raw.len() as u64)
    }

    /// Compresses a body and puts the checksummed header before it,
    /// announcing `decoded_len` decoded bytes. [`Segment::encode`] announces
    /// the body's true length; tests and fuzzers pass a body or a length of
    /// their own to forge segments that pass the checksum.
    pub fn frame(raw: &[u8], decoded_len: u64) -> Vec<u8> {
        // unwrap: compressing from and into memory cannot fail.
        let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL).unwrap();
        let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&decoded_len.to_le_bytes());
        out.extend_from_slice(&checksum(decoded_len, &compressed).to_le_bytes());
        out.extend_from_slice(&compressed);
        out
    }

    /// Decodes a segment; `name` only labels errors.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Segment, FormatError> {
        let bad = |why: String| FormatError(format!("segment {name} is corrupt: {why}"));
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err(bad(format!("no segment header ({} bytes)", bytes.len())));
        }
        if bytes[4] != VERSION {
            return Err(bad(format!("unknown version {}", bytes[4])));
        }
        // unwrap (both): the slices have exactly the array's length.
        let decoded_len = u64::from_le_bytes(bytes[5..13].try_into().unwrap());
        let crc = u32::from_le_bytes(bytes[13..17].try_into().unwrap());
        let compressed = &bytes[HEADER_LEN..];
        if checksum(decoded_len, compressed) != crc {
            return Err(bad("checksum mismatch (truncated or damaged)".into()));
        }
        // Entries are uniform hashes, which do not compress: a body much
        // larger than its compressed form is hostile, and is refused before
        // any buffer is sized by it.
        if decoded_len > MAX_DECODED_BYTES as u64 || decoded_len > compressed.len() as u64 * MAX_RATIO + 4096
        {
            return Err(bad(format!("announces {decoded_len} bytes from {} compressed", compressed.len())));
        }
        let raw = zstd::bulk::decompress(compressed, decoded_len as usize)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        if raw.len() as u64 != decoded_len {
            return Err(bad(format!("{} bytes decoded, {decoded_len} announced", raw.len())));
        }
        check_columns(&raw).map_err(bad)?;
        let (body, used): (SegmentBody, usize) =
            bincode::decode_from_slice(&raw, bincode_config().with_limit::<MAX_DECODED_BYTES>())
                .map_err(|e| bad(format!("bincode: {e}")))?;
        if used != raw.len() {
            return Err(bad("trailing bytes".into()));
        }
        if body.lo.len() != body.hi.len() || body.lo.len() != body.expiry.len() {
            return Err(bad("columns of different lengths".into()));
        }
        if body.total_hash_ranges == 0 || body.range >= body.total_hash_ranges {
            return Err(bad(format!("range {} of {}", body.range, body.total_hash_ranges)));
        }
        let entries = body
            .lo
            .into_iter()
            .zip(body.hi)
            .zip(body.expiry)
            .map(|((lo, hi), expiry)| (TableKey { lo, hi }, expiry))
            .collect();
        Ok(Segment {
            range: body.range,
            total_hash_ranges: body.total_hash_ranges,
            kind: body.kind,
            created: body.created,
            entries,
        })
    }
}

/// One segment named by a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    /// Object name relative to the range's folder.
    pub name: String,
    pub kind: SegmentKind,
    pub entries: u64,
    pub bytes: u64,
    pub created: u64,
}

/// The last segment a node wrote for a range it handed off in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub epoch: u64,
    pub node_id: u32,
    /// The cluster the mark was written in (empty in marks written before
    /// cluster ids existed): marks of another cluster never count.
    #[serde(default)]
    pub cluster_id: String,
}

/// A range's chain of segments in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub range: u32,
    pub total_hash_ranges: u32,
    /// The latest full segment first, then incrementals, oldest first.
    pub segments: Vec<SegmentRef>,
    /// Unix seconds of the last segment written.
    pub last_snapshot: u64,
    #[serde(default)]
    pub handoff: Option<Handoff>,
}

impl Manifest {
    pub fn empty(range: u32, total_hash_ranges: u32) -> Self {
        Manifest {
            version: 1,
            range,
            total_hash_ranges,
            segments: Vec::new(),
            last_snapshot: 0,
            handoff: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // unwrap: a manifest has only plain fields, which always serialize.
        serde_json::to_vec_pretty(self).unwrap()
    }

    pub fn decode(name: &str, bytes: &[u8]) -> Result<Manifest, FormatError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| FormatError(format!("manifest {name} is corrupt: {e}")))?;
        if m.version != 1 {
            return Err(FormatError(format!("manifest {name} has unknown version {}", m.version)));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: u64) -> Segment {
        Segment {
            range: 3,
            total_hash_ranges: 128,
            kind: SegmentKind::Incremental,
            created: 1_800_000_000,
            entries: (0..n)
                .map(|i| (TableKey { lo: i * 7919, hi: i as u32 }, 1_800_000_000 + i as u32))
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        for n in [0, 1, 1000] {
            let s = sample(n);
            assert_eq!(Segment::decode("x", &s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn damage_is_named_never_fewer_keys() {
        let bytes = sample(1000).encode();
        for cut in [0, 4, 9, bytes.len() / 2, bytes.len() - 1] {
            let err = Segment::decode("ranges/00003/a.seg", &bytes[..cut]).unwrap_err();
            assert!(err.0.contains("ranges/00003/a.seg"), "{err}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(Segment::decode("s", &flipped).is_err());
    }

    #[test]
    fn manifest_round_trip_and_damage() {
        let mut m = Manifest::empty(5, 128);
        m.segments.push(SegmentRef {
            name: "a.seg".into(),
            kind: SegmentKind::Full,
            entries: 3,
            bytes: 10,
            created: 1,
        });
        m.handoff = Some(Handoff { epoch: 2, node_id: 1, cluster_id: "c".into() });
        let bytes = m.encode();
        assert_eq!(Manifest::decode("m", &bytes).unwrap(), m);
        let err = Manifest::decode("ranges/00005/manifest.json", &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(err.0.contains("ranges/00005/manifest.json"));
    }

    /// Found by tests/fuzz.rs: intact checksums over hostile sizes made the
    /// decoder allocate 34 GB and abort the process.
    #[test]
    fn hostile_sizes_are_refused_before_allocating() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&3u32.to_le_bytes());
        raw.extend_from_slice(&128u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&1u64.to_le_bytes());
        // The lo column announces 2^31 entries; the body has none.
        raw.extend_from_slice(&(1u64 << 31).to_le_bytes());
        raw.extend_from_slice(&[0; 16]);
        let err = Segment::decode("s", &Segment::frame(&raw, raw.len() as u64)).unwrap_err();
        assert!(err.0.contains("entries announced"), "{err}");
        // A tiny compressed body announcing 30 GB decoded.
        let err = Segment::decode("s", &Segment::frame(&raw, 30 << 30)).unwrap_err();
        assert!(err.0.contains("announces"), "{err}");
        // Columns of different lengths inside a body of the right size.
        let mut uneven = sample(2).encode();
        let body = zstd::bulk::decompress(&uneven[HEADER_LEN..], 1 << 20).unwrap();
        let mut body = body.clone();
        let hi_at = BODY_FIXED + 8 + 16;
        body[hi_at..hi_at + 8].copy_from_slice(&3u64.to_le_bytes());
        uneven = Segment::frame(&body, body.len() as u64);
        assert!(Segment::decode("s", &uneven).unwrap_err().0.contains("different lengths"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256), crc_ok in any::<bool>()) {
            let mut bytes = b"KDBS\x01".to_vec();
            let len = body.len() as u64 * 3;
            bytes.extend_from_slice(&len.to_le_bytes());
            let crc = if crc_ok { checksum(len, &body) } else { 0 };
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = Segment::decode("fuzz", &bytes);
            let _ = Manifest::decode("fuzz", &body);
        }
    }
}
