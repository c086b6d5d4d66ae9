//! Request and response bodies of the data routes (`/put`, `/get`, `/claim`),
//! in JSON and in the binary fast path.
//!
//! Decoding validates everything API.md asks for (field names, key sizes, key
//! count, TTL range) and turns keys straight into fingerprints without
//! keeping the key bytes. It never panics and never allocates more than the
//! body's size justifies, whatever the bytes.
//!
//! # Binary fast path, version 1
//!
//! `Content-Type: application/octet-stream`. Request body:
//!
//! ```text
//! byte 0      version = 1
//! bytes 1..   bincode 2 (standard config, fixed-width little-endian integers)
//!             of BinaryRequest { ttl_seconds: u64, keys: BinaryKeys }
//!             BinaryKeys = Keys(Vec<bytes>)          variant tag u32 0
//!                        | Fingerprints(Vec<u128>)   variant tag u32 1
//! ```
//!
//! so a request is `01 | ttl u64 | tag u32 | count u64 | items`, where a key is
//! `len u64 | bytes` and a fingerprint is `xxh3_128(key)` as 16 little-endian
//! bytes. `ttl_seconds` is ignored by `/get` (send 0). Trailing bytes are an
//! error. Response body of every data route (errors stay JSON):
//!
//! ```text
//! byte 0      version = 1
//! bytes 1..   bincode 2 (same config) of BinaryResponse { epoch: u64, count: u64, bits: Vec<u8> }
//! ```
//!
//! `bits` holds `count` booleans packed least-significant bit first (bit `i % 8`
//! of byte `i / 8`): `exists` for `/get`, `existed` for `/claim`; `/put`
//! answers `count = 0` and no bits.

use std::fmt;

use bincode::config::{self, Configuration, Fixint, LittleEndian};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use crate::fingerprint::{checked_fingerprint, Fingerprint};

pub const BINARY_VERSION: u8 = 1;

/// Largest TTL: ten years (API.md).
pub const MAX_TTL_SECONDS: u64 = 315_360_000;

/// The three data routes, as the node serves them and the client calls them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Put,
    Claim,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Put => "put",
            Verb::Claim => "claim",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Verb::Get => "/get",
            Verb::Put => "/put",
            Verb::Claim => "/claim",
        }
    }
}

/// What a data route needs from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRequest {
    pub fingerprints: Vec<Fingerprint>,
    /// `None` for `/get`.
    pub ttl_seconds: Option<u32>,
}

/// A body that cannot be accepted; the message is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bincode_config() -> Configuration<LittleEndian, Fixint> {
    config::standard().with_fixed_int_encoding()
}

fn check_ttl(ttl: i128) -> Result<u32, DecodeError> {
    if (1..=i128::from(MAX_TTL_SECONDS)).contains(&ttl) {
        Ok(ttl as u32)
    } else {
        Err(DecodeError(format!("ttl_seconds must be an integer 1..={MAX_TTL_SECONDS}, got {ttl}")))
    }
}

fn check_count(count: u64, max_keys: usize) -> Result<(), DecodeError> {
    if count > max_keys as u64 {
        Err(DecodeError(format!("too many keys: {count} (at most {max_keys} per request)")))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------- JSON

/// Decodes `{"keys": [...], "ttl_seconds": n}` (`with_ttl`) or `{"keys": [...]}`.
pub fn decode_json(body: &[u8], with_ttl: bool, max_keys: usize) -> Result<DataRequest, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let request = RequestSeed { with_ttl, max_keys }
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| DecodeError(format!("invalid JSON body: {e}")))?;
    Ok(request)
}

struct RequestSeed {
    with_ttl: bool,
    max_keys: usize,
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = DataRequest;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<DataRequest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = DataRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.with_ttl {
            f.write_str(r#"an object {"keys": [...], "ttl_seconds": n}"#)
        } else {
            f.write_str(r#"an object {"keys": [...]}"#)
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataRequest, A::Error> {
        let mut keys: Option<Vec<Fingerprint>> = None;
        let mut ttl: Option<u32> = None;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match field.as_ref() {
                "keys" if keys.is_some() => return Err(de::Error::duplicate_field("keys")),
                "keys" => keys = Some(map.next_value_seed(KeysSeed { max_keys: self.max_keys })?),
                "ttl_seconds" if self.with_ttl => {
                    if ttl.is_some() {
                        return Err(de::Error::duplicate_field("ttl_seconds"));
                    }
                    let value: serde_json::Number = map.next_value()?;
                    let ttl_value = value
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| value.as_u64().map(i128::from))
                        .ok_or_else(|| {
                            de::Error::custom(format!("ttl_seconds must be an integer, got {value}"))
                        })?;
                    ttl = Some(check_ttl(ttl_value).map_err(de::Error::custom)?);
                }
                other => {
                    let expected: &[&str] = if self.with_ttl { &["keys", "ttl_seconds"] } else { &["keys"] };
                    return Err(de::Error::unknown_field(other, expected));
                }
            }
        }
        let fingerprints = keys.ok_or_else(|| de::Error::missing_field("keys"))?;
        if self.with_ttl && ttl.is_none() {
            return Err(de::Error::missing_field("ttl_seconds"));
        }
        Ok(DataRequest { fingerprints, ttl_seconds: ttl })
    }
}

struct KeysSeed {
    max_keys: usize,
}

impl<'de> DeserializeSeed<'de> for KeysSeed {
    type Value = Vec<Fingerprint>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed {
    type Value = Vec<Fingerprint>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_keys));
        while let Some(fp) = seq.next_element_seed(KeySeed { index: out.len() })? {
            if out.len() == self.max_keys {
                return Err(de::Error::custom(format!(
                    "too many keys (at most {} per request)",
                    self.max_keys
                )));
            }
            out.push(fp);
        }
        Ok(out)
    }
}

/// One key string, fingerprinted without being kept.
struct KeySeed {
    index: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Fingerprint;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Fingerprint, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Fingerprint;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string key at position {}", self.index)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Fingerprint, E> {
        checked_fingerprint(self.index, v.as_bytes()).map_err(E::custom)
    }
}

/// `{"success": true, "epoch": n}`
#[derive(Debug, Serialize)]
pub struct PutResponse {
    pub success: bool,
    pub epoch: u64,
}

/// `{"exists": [...], "epoch": n}`
#[derive(Debug, Serialize)]
pub struct GetResponse<'a> {
    pub exists: &'a [bool],
    pub epoch: u64,
}

/// `{"existed": [...], "epoch": n}`
#[derive(Debug, Serialize)]
pub struct ClaimResponse<'a> {
    pub existed: &'a [bool],
    pub epoch: u64,
}

/// `GET /info` (API.md). Clients read it leniently: a field a newer node
/// adds must not break an older client (tests/api_doc.rs keeps the node's
/// fields exactly those of API.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Info {
    pub node_id: u32,
    pub cluster_size: u32,
    pub addresses: Vec<String>,
    pub epoch: u64,
    pub state: crate::view::ClusterState,
    pub total_hash_ranges: u32,
    /// Ranges this node serves now.
    pub hash_ranges: Vec<u32>,
    /// Index = range, value = owner node in this node's view.
    pub range_owners: Vec<u32>,
    pub ranges_loading: Vec<u32>,
    pub ranges_draining: Vec<u32>,
    /// Stored keys; expired ones count until the sweep reaches them.
    pub keys_count: u64,
    /// Unix seconds of the last completed snapshot, 0 if none.
    pub last_snapshot_timestamp: u64,
    /// The cluster's id (made when it was bootstrapped).
    #[serde(default)]
    pub cluster_id: String,
    /// Whether the object store honours conditional writes, which fence
    /// concurrent changes of `cluster.json` and manifests.
    #[serde(default)]
    pub conditional_writes: bool,
    /// While the cluster is scaling, the address list before the scale
    /// (`addresses` is the one it goes to); null when stable. A scale
    /// resumed from the nodes alone needs both.
    #[serde(default)]
    pub previous_addresses: Option<Vec<String>>,
}

impl Info {
    /// The view this node answered under.
    pub fn view(&self) -> crate::view::ViewWire {
        crate::view::ViewWire {
            epoch: self.epoch,
            addresses: self.addresses.clone(),
            total_hash_ranges: self.total_hash_ranges,
            state: self.state,
        }
    }
}

// ---------------------------------------------------------------- binary

/// The binary request (after the version byte).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::BorrowDecode)]
pub struct BinaryRequest<'a> {
    pub ttl_seconds: u64,
    pub keys: BinaryKeys<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::BorrowDecode)]
pub enum BinaryKeys<'a> {
    Keys(Vec<&'a [u8]>),
    Fingerprints(Vec<u128>),
}

/// What precedes the items; read first so that a hostile count is refused
/// before anything is allocated for it.
#[derive(bincode::Decode)]
struct BinaryHeader {
    _ttl_seconds: u64,
    kind: u32,
    count: u64,
}

/// The binary response (after the version byte).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct BinaryResponse {
    pub epoch: u64,
    pub count: u64,
    pub bits: Vec<u8>,
}

impl BinaryResponse {
    pub fn new(epoch: u64, answers: &[bool]) -> Self {
        let mut bits = vec![0u8; answers.len().div_ceil(8)];
        for (i, &b) in answers.iter().enumerate() {
            bits[i / 8] |= u8::from(b) << (i % 8);
        }
        BinaryResponse { epoch, count: answers.len() as u64, bits }
    }

    /// The booleans, or `None` if `bits` is too short for `count`.
    pub fn answers(&self) -> Option<Vec<bool>> {
        let count = usize::try_from(self.count).ok()?;
        if self.bits.len() != count.div_ceil(8) {
            return None;
        }
        Some((0..count).map(|i| self.bits[i / 8] & (1 << (i % 8)) != 0).collect())
    }
}

/// Encodes a request body for the binary fast path.
pub fn encode_binary_request(request: &BinaryRequest<'_>) -> Vec<u8> {
    let mut out = vec![BINARY_VERSION];
    // unwrap: encoding into a Vec cannot fail.
    out.extend(bincode::encode_to_vec(request, bincode_config()).unwrap());
    out
}

pub fn encode_binary_response(response: &BinaryResponse) -> Vec<u8> {
    let mut out = vec![BINARY_VERSION];
    // unwrap: encoding into a Vec cannot fail.
    out.extend(bincode::encode_to_vec(response, bincode_config()).unwrap());
    out
}

pub fn decode_binary_response(body: &[u8]) -> Result<BinaryResponse, DecodeError> {
    let rest = strip_version(body)?;
    let (response, used): (BinaryResponse, usize) =
        bincode::decode_from_slice(rest, bincode_config().with_limit::<{ 1 << 30 }>())
            .map_err(|e| DecodeError(format!("invalid binary response: {e}")))?;
    if used != rest.len() {
        return Err(DecodeError("trailing bytes after the binary response".into()));
    }
    Ok(response)
}

fn strip_version(body: &[u8]) -> Result<&[u8], DecodeError> {
    match body.split_first() {
        Some((&BINARY_VERSION, rest)) => Ok(rest),
        Some((v, _)) => {
            Err(DecodeError(format!("unsupported binary version {v} (this node speaks {BINARY_VERSION})")))
        }
        None => Err(DecodeError("empty binary body".into())),
    }
}

/// Decodes a binary request body.
pub fn decode_binary(body: &[u8], with_ttl: bool, max_keys: usize) -> Result<DataRequest, DecodeError> {
    let rest = strip_version(body)?;
    let bad = |e: bincode::error::DecodeError| DecodeError(format!("invalid binary body: {e}"));
    let (header, _): (BinaryHeader, usize) =
        bincode::decode_from_slice(rest, bincode_config()).map_err(bad)?;
    check_count(header.count, max_keys)?;
    // Smallest encoded item: a fingerprint is 16 bytes, a key at least 9.
    let min_item = if header.kind == 1 { 16 } else { 9 };
    if header.count.saturating_mul(min_item) > rest.len() as u64 {
        return Err(DecodeError(format!(
            "invalid binary body: {} items announced in {} bytes",
            header.count,
            rest.len()
        )));
    }
    let (request, used): (BinaryRequest<'_>, usize) =
        bincode::borrow_decode_from_slice(rest, bincode_config()).map_err(bad)?;
    if used != rest.len() {
        return Err(DecodeError(format!("invalid binary body: {} trailing bytes", rest.len() - used)));
    }
    let ttl_seconds = if with_ttl { Some(check_ttl(i128::from(request.ttl_seconds))?) } else { None };
    let fingerprints = match request.keys {
        BinaryKeys::Keys(keys) => keys
            .iter()
            .enumerate()
            .map(|(i, k)| checked_fingerprint(i, k))
            .collect::<Result<_, _>>()
            .map_err(|e| DecodeError(e.to_string()))?,
        BinaryKeys::Fingerprints(fps) => fps.into_iter().map(Fingerprint).collect(),
    };
    Ok(DataRequest { fingerprints, ttl_seconds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(k: &str) -> Fingerprint {
        Fingerprint::of(k.as_bytes())
    }

    /// A client reads `/info` and views from a newer node, which may carry
    /// fields it does not know.
    #[test]
    fn info_and_views_from_a_newer_node_are_read() {
        let info = r#"{"node_id": 1, "cluster_size": 2, "addresses": ["a:1", "b:2"], "epoch": 3,
            "state": "stable", "total_hash_ranges": 4, "hash_ranges": [1, 3], "range_owners": [0, 1, 0, 1],
            "ranges_loading": [], "ranges_draining": [], "keys_count": 5, "last_snapshot_timestamp": 0,
            "a_field_from_the_future": {"x": 1}}"#;
        let info: Info = serde_json::from_str(info).unwrap();
        assert_eq!((info.node_id, info.epoch, info.previous_addresses), (1, 3, None));
        let view =
            r#"{"epoch": 3, "addresses": ["a:1"], "total_hash_ranges": 4, "state": "scaling", "later": 1}"#;
        let view: crate::view::ViewWire = serde_json::from_str(view).unwrap();
        assert_eq!(view.epoch, 3);
    }

    #[test]
    fn json_requests() {
        let r = decode_json(br#"{"keys": ["a", "b\u0041"], "ttl_seconds": 5}"#, true, 10).unwrap();
        assert_eq!(r.fingerprints, vec![fp("a"), fp("bA")]);
        assert_eq!(r.ttl_seconds, Some(5));
        let r = decode_json(br#"{"keys": []}"#, false, 10).unwrap();
        assert!(r.fingerprints.is_empty());
        assert_eq!(r.ttl_seconds, None);
    }

    #[test]
    fn json_rejections() {
        let long = format!(r#"{{"keys": ["{}"]}}"#, "x".repeat(1025));
        let cases: Vec<(&[u8], bool)> = vec![
            (b"{", false),
            (b"[]", false),
            (br#"{"keys": ["a"], "extra": 1}"#, false),
            (br#"{"keys": ["a"], "keys": ["b"]}"#, false),
            (br#"{"keys": ["a"]}"#, true),
            (br#"{"ttl_seconds": 5}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": 5}"#, false),
            (br#"{"keys": [""], "ttl_seconds": 5}"#, true),
            (br#"{"keys": [1], "ttl_seconds": 5}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": 0}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": -1}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": 315360001}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": 1.5}"#, true),
            (br#"{"keys": ["a"], "ttl_seconds": "5"}"#, true),
            (br#"{"keys": ["a","b","c","d"], "ttl_seconds": 5}"#, true),
            (br#"{"keys": ["a"]} x"#, false),
            (long.as_bytes(), false),
        ];
        for (body, with_ttl) in cases {
            assert!(decode_json(body, with_ttl, 3).is_err(), "accepted {}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn binary_round_trip() {
        let body = encode_binary_request(&BinaryRequest {
            ttl_seconds: 60,
            keys: BinaryKeys::Keys(vec![b"a", b"bb"]),
        });
        let r = decode_binary(&body, true, 10).unwrap();
        assert_eq!(r.fingerprints, vec![fp("a"), fp("bb")]);
        assert_eq!(r.ttl_seconds, Some(60));
        let body = encode_binary_request(&BinaryRequest {
            ttl_seconds: 0,
            keys: BinaryKeys::Fingerprints(vec![fp("a").0]),
        });
        assert_eq!(decode_binary(&body, false, 10).unwrap().fingerprints, vec![fp("a")]);
        assert!(decode_binary(&body, true, 10).is_err(), "ttl 0 on put");
        let response = BinaryResponse::new(7, &[true, false, true, true, false, false, false, false, true]);
        let decoded = decode_binary_response(&encode_binary_response(&response)).unwrap();
        assert_eq!(decoded.epoch, 7);
        assert_eq!(
            decoded.answers().unwrap(),
            vec![true, false, true, true, false, false, false, false, true]
        );
    }

    #[test]
    fn binary_rejections() {
        let good = encode_binary_request(&BinaryRequest {
            ttl_seconds: 60,
            keys: BinaryKeys::Keys(vec![b"a", b""]),
        });
        assert!(decode_binary(&good, true, 10).is_err(), "empty key");
        assert!(decode_binary(&[], true, 10).is_err());
        assert!(decode_binary(&[2, 0, 0], true, 10).is_err());
        let mut trailing = encode_binary_request(&BinaryRequest {
            ttl_seconds: 60,
            keys: BinaryKeys::Fingerprints(vec![1]),
        });
        trailing.push(0);
        assert!(decode_binary(&trailing, true, 10).is_err());
        // A huge announced count is refused before allocating.
        let mut hostile = vec![BINARY_VERSION];
        hostile.extend(60u64.to_le_bytes());
        hostile.extend(1u32.to_le_bytes());
        hostile.extend(u64::MAX.to_le_bytes());
        assert!(decode_binary(&hostile, true, usize::MAX).is_err());
        let many = encode_binary_request(&BinaryRequest {
            ttl_seconds: 60,
            keys: BinaryKeys::Fingerprints(vec![1; 11]),
        });
        assert!(decode_binary(&many, true, 10).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_binary(&body, true, 100);
            let _ = decode_json(&body, true, 100);
            let _ = decode_binary_response(&body);
        }

        #[test]
        fn mutated_binary_never_panics(pos in 0usize..64, byte in any::<u8>()) {
            let mut body = encode_binary_request(&BinaryRequest {
                ttl_seconds: 60,
                keys: BinaryKeys::Keys(vec![b"abc", b"de", b"fghij"]),
            });
            let i = pos % body.len();
            body[i] = byte;
            let _ = decode_binary(&body, true, 100);
        }
    }
}
