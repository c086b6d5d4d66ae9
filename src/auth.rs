//! Bearer tokens with scopes: the token file, lookups in constant time, and
//! which scope each route needs.
//!
//! The token file holds one token per line as `<name> <scope> sha256:<hex>`
//! (blank lines and `#` comments are ignored). Only the SHA-256 of a token
//! is kept, so the file, a ConfigMap or a log line never holds a usable
//! secret; `keydb-admin token` makes a token and its line. Scopes nest:
//! `admin` may do everything `write` may, and `write` everything `read` may.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `/get`, `/info`, `/metrics`.
    Read,
    /// `/put`, `/claim`, and read.
    Write,
    /// `/createSnapshots`, `/scale`, `/scaleComplete`, and everything else.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The scope a route needs, or `None` for the open ones: the probes and
/// the status page (which asks for a token itself). `/metrics` is open only
/// when `metrics_open`. A path with no route needs `admin`, so that a
/// refusal never tells which paths exist.
pub fn required_scope(path: &str, metrics_open: bool) -> Option<Scope> {
    match path {
        "/healthz" | "/readyz" | "/" => None,
        "/metrics" if metrics_open => None,
        "/metrics" | "/get" | "/info" => Some(Scope::Read),
        "/put" | "/claim" => Some(Scope::Write),
        _ => Some(Scope::Admin),
    }
}

/// One line of the token file.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    scope: Scope,
    hash: [u8; 32],
}

/// The tokens a node accepts.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    // Names and scopes only: hashes stay out of logs too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| format!("{} ({})", e.name, e.scope))).finish()
    }
}

/// Who presented a known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

impl Tokens {
    /// Parses a token file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: &str| {
                format!("line {}: {what} (expected `<name> <scope> sha256:<64 hex digits>`)", i + 1)
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scope, hash] = fields[..] else {
                return Err(at(&format!("{} fields", fields.len())));
            };
            let scope = Scope::parse(scope)
                .ok_or_else(|| at(&format!("scope {scope:?} is not read, write or admin")))?;
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(parse_hex32)
                .ok_or_else(|| at("the hash is not sha256: and 64 hex digits"))?;
            if entries.iter().any(|e| e.name == name) {
                return Err(at(&format!("the name {name:?} is used twice")));
            }
            if entries.iter().any(|e| e.hash == hash) {
                return Err(at("the same token is listed twice"));
            }
            entries.push(Entry { name: name.to_string(), scope, hash });
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses a token file.
    pub fn read(path: &Path) -> Result<Tokens, String> {
        let bytes = crate::files::read_small(path)?;
        let text = String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a token belongs to. Every entry is compared, in constant
    /// time, whether or not an earlier one matched.
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        let hash = hash_token(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found.map(|e| Caller { name: e.name.clone(), scope: e.scope })
    }
}

/// SHA-256 of a token's bytes.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token (`kdb_` and 64 hex digits: 256 bits from the OS).
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("kdb_{}", hex(&bytes)))
}

/// The token file line for `token`.
pub fn file_line(name: &str, scope: Scope, token: &str) -> String {
    format!("{name} {scope} sha256:{}", hex(&hash_token(token)))
}

/// A valid token name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_from_file_line_is_found_with_its_scope() {
        let token = new_token().unwrap();
        let other = new_token().unwrap();
        let text = format!(
            "# comment\n\n{}\n{}\n",
            file_line("ingest", Scope::Write, &token),
            file_line("ops", Scope::Admin, &other)
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.lookup(&token), Some(Caller { name: "ingest".into(), scope: Scope::Write }));
        assert_eq!(tokens.lookup(&other).map(|c| c.scope), Some(Scope::Admin));
        assert_eq!(tokens.lookup("kdb_nope"), None);
        assert_eq!(tokens.lookup(""), None);
        assert!(!format!("{tokens:?}").contains("sha256"), "hashes stay out of Debug");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let good = file_line("a", Scope::Read, "t");
        for (text, needle) in [
            ("a read".to_string(), "line 1: 2 fields"),
            ("a root sha256:00".to_string(), "scope \"root\""),
            ("a read md5:00".to_string(), "not sha256"),
            (format!("a read sha256:{}", "g".repeat(64)), "not sha256"),
            (format!("{good}\n{good}"), "line 2: the name \"a\" is used twice"),
            (format!("{good}\n{}", good.replacen("a ", "b ", 1)), "line 2: the same token"),
        ] {
            let e = Tokens::parse(&text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn scopes_nest_and_routes_need_theirs() {
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        assert_eq!(required_scope("/healthz", false), None);
        assert_eq!(required_scope("/readyz", false), None);
        assert_eq!(required_scope("/", false), None);
        assert_eq!(required_scope("/metrics", false), Some(Scope::Read));
        assert_eq!(required_scope("/metrics", true), None);
        assert_eq!(required_scope("/get", false), Some(Scope::Read));
        assert_eq!(required_scope("/info", false), Some(Scope::Read));
        assert_eq!(required_scope("/put", false), Some(Scope::Write));
        assert_eq!(required_scope("/claim", false), Some(Scope::Write));
        assert_eq!(required_scope("/scale", false), Some(Scope::Admin));
        assert_eq!(required_scope("/nope", false), Some(Scope::Admin));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("ingest-1.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
