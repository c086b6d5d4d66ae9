//! The operation history of a nemesis run and its checker. Clients record
//! every operation with its start and end (ms since the run began) and its
//! outcome; the nemesis records what it did to the cluster (wipes, snapshots,
//! layouts). [`check`] then judges the whole history: no false "absent", no
//! false "present", no key claimed twice within its TTL. Pure: no I/O, no
//! clock, so it is unit-tested with hand-made histories.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

/// Margin for the end of a TTL window: a get that ends this close to the
/// earliest possible expiry is not judged.
pub const EXPIRY_MARGIN_MS: u64 = 100;
/// How long after the latest possible expiry a key may still answer present
/// (expiry is rounded up to the next whole second on the node).
pub const PRESENT_GRACE_MS: u64 = 1500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Put,
    Get,
    Claim,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged; `answers` per key for get (`exists`) and claim
    /// (`existed`), empty for put.
    Ok { answers: Vec<bool> },
    /// Certainly not applied: 4xx, 503, 421, connection refused.
    Error { reason: String },
    /// Maybe applied: timeout, connection lost mid-request, 500
    /// `outcome_unknown`, `ClientError::OutcomeUnknown`.
    Unknown { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub client: String,
    pub kind: Kind,
    pub keys: Vec<String>,
    pub ttl_s: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
}

/// What the nemesis did that the checker must know of.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Events {
    /// `(slot, ms)`: the node in this slot lost its data dir; `ms` is when
    /// it was stopped (it held nothing new after that).
    pub wipes: Vec<(usize, u64)>,
    /// `(slot, start_ms, end_ms)`: an acknowledged `/createSnapshots` on
    /// that node: every key it acknowledged before `start_ms` is in the store.
    pub snapshots: Vec<(usize, u64, u64)>,
    /// `(ms, sizes)`: from `ms` on, the cluster may be laid out for any of
    /// these node counts (two while a scale runs).
    pub layouts: Vec<(u64, Vec<usize>)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub ops: HashMap<String, u64>,
    pub answers_checked: u64,
    pub absent_exempt_by_wipe: u64,
    pub present_unbounded: u64,
    pub claim_pairs_checked: u64,
}

/// One write of a key that may have stored it.
#[derive(Debug, Clone, Copy)]
struct Write {
    /// Index of the op in the history.
    op: usize,
    start: u64,
    end: u64,
    ttl_ms: u64,
    /// Acknowledged as stored by this op (a put, or a claim answered "new").
    acked: bool,
    /// Outcome unknown: maybe stored, at a time we cannot bound.
    unknown: bool,
    /// A claim answered "did not exist".
    claimed_new: bool,
}

pub struct Checker<'a> {
    events: &'a Events,
    range_of: &'a dyn Fn(&str) -> u32,
    owners: &'a dyn Fn(usize) -> Vec<u32>,
    owner_cache: std::cell::RefCell<HashMap<usize, Vec<u32>>>,
}

impl<'a> Checker<'a> {
    pub fn new(
        events: &'a Events,
        range_of: &'a dyn Fn(&str) -> u32,
        owners: &'a dyn Fn(usize) -> Vec<u32>,
    ) -> Self {
        Checker { events, range_of, owners, owner_cache: Default::default() }
    }

    /// Slots that may have held `range` at some point of `[start, end]`.
    fn holders(&self, range: u32, start: u64, end: u64) -> BTreeSet<usize> {
        let layouts = &self.events.layouts;
        let mut out = BTreeSet::new();
        for (i, (from, sizes)) in layouts.iter().enumerate() {
            let until = layouts.get(i + 1).map_or(u64::MAX, |l| l.0);
            if *from > end || until < start {
                continue;
            }
            for &n in sizes {
                let mut cache = self.owner_cache.borrow_mut();
                let owners = cache.entry(n).or_insert_with(|| (self.owners)(n));
                out.insert(owners[range as usize] as usize);
            }
        }
        out
    }

    /// Whether a wipe between the write and `read_end` may have lost the
    /// key legitimately: it hit a slot that may have held the key's range
    /// and no snapshot of that slot started after the write and completed
    /// before the wipe.
    fn lost_to_wipe(&self, key: &str, w: &Write, read_end: u64) -> bool {
        let range = (self.range_of)(key);
        let mut holders: Option<BTreeSet<usize>> = None;
        self.events.wipes.iter().any(|&(slot, at)| {
            if at < w.start || at > read_end {
                return false;
            }
            let holders = holders.get_or_insert_with(|| self.holders(range, w.start, w.end));
            holders.contains(&slot)
                && !self
                    .events
                    .snapshots
                    .iter()
                    .any(|&(s, start, end)| s == slot && start > w.end && end < at)
        })
    }
}

/// Judges `ops`; returns the violations found (empty: the history is fine).
pub fn check(ops: &[Op], checker: &Checker, summary: &mut Summary) -> Vec<String> {
    let mut violations = Vec::new();
    let mut writes: HashMap<&str, Vec<Write>> = HashMap::new();
    for (op_i, op) in ops.iter().enumerate() {
        let name = format!(
            "{:?} {}",
            op.kind,
            match op.outcome {
                Outcome::Ok { .. } => "ok",
                Outcome::Error { .. } => "error",
                Outcome::Unknown { .. } => "unknown",
            }
        );
        *summary.ops.entry(name).or_default() += 1;
        if op.kind == Kind::Get {
            continue;
        }
        for (i, key) in op.keys.iter().enumerate() {
            let ttl_ms = op.ttl_s * 1000;
            let w = match (&op.outcome, op.kind) {
                (Outcome::Error { .. }, _) => continue,
                (Outcome::Unknown { .. }, _) => Write {
                    op: op_i,
                    start: op.start_ms,
                    end: op.end_ms,
                    ttl_ms,
                    acked: false,
                    unknown: true,
                    claimed_new: false,
                },
                (Outcome::Ok { .. }, Kind::Put) => Write {
                    op: op_i,
                    start: op.start_ms,
                    end: op.end_ms,
                    ttl_ms,
                    acked: true,
                    unknown: false,
                    claimed_new: false,
                },
                (Outcome::Ok { answers }, _) => {
                    if answers[i] {
                        continue; // it existed: this claim stored nothing
                    }
                    Write {
                        op: op_i,
                        start: op.start_ms,
                        end: op.end_ms,
                        ttl_ms,
                        acked: true,
                        unknown: false,
                        claimed_new: true,
                    }
                }
            };
            writes.entry(key.as_str()).or_default().push(w);
        }
    }

    let mut report = |v: String| {
        if violations.len() < 200 {
            violations.push(v);
        }
    };
    // Every answer about a key, as a read: get `exists` and claim `existed`.
    for (op_i, op) in ops.iter().enumerate() {
        let Outcome::Ok { answers } = &op.outcome else { continue };
        if op.kind == Kind::Put {
            continue;
        }
        for (i, (key, &present)) in op.keys.iter().zip(answers).enumerate() {
            summary.answers_checked += 1;
            let ws = writes.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            // A claim's own write is no reason for its own answer.
            let before: Vec<&Write> = ws.iter().filter(|w| w.start <= op.end_ms && w.op != op_i).collect();
            // Duplicates inside one claim batch: the first is the answer.
            if op.kind == Kind::Claim && op.keys[..i].contains(key) {
                continue;
            }
            if present {
                if before.is_empty() {
                    report(format!(
                        "false present: {key} was never written before {} answered present [{}..{}] ms",
                        op.client, op.start_ms, op.end_ms
                    ));
                } else if before.iter().any(|w| w.unknown) {
                    summary.present_unbounded += 1;
                } else {
                    let last = before.iter().map(|w| w.end + w.ttl_ms).max().unwrap_or(0);
                    if op.start_ms > last + PRESENT_GRACE_MS {
                        report(format!(
                            "false present: {key} answered present by {} [{}..{}] ms, {} ms after its latest possible expiry ({last} ms)",
                            op.client,
                            op.start_ms,
                            op.end_ms,
                            op.start_ms - last
                        ));
                    }
                }
            } else {
                for w in ws.iter().filter(|w| w.acked && w.end < op.start_ms && w.op != op_i) {
                    if op.end_ms + EXPIRY_MARGIN_MS >= w.start + w.ttl_ms {
                        continue;
                    }
                    if checker.lost_to_wipe(key, w, op.end_ms) {
                        summary.absent_exempt_by_wipe += 1;
                        continue;
                    }
                    report(format!(
                        "false absent: {key} acknowledged [{}..{}] ms with ttl {} s, then {} answered {} [{}..{}] ms",
                        w.start,
                        w.end,
                        w.ttl_ms / 1000,
                        op.client,
                        if op.kind == Kind::Claim { "existed=false" } else { "absent" },
                        op.start_ms,
                        op.end_ms
                    ));
                    break;
                }
            }
        }
    }
    // Two definite "new" claims of one key: one must have come after the
    // other's earliest possible expiry.
    for (key, ws) in &writes {
        let news: Vec<&Write> = ws.iter().filter(|w| w.claimed_new).collect();
        for (a_i, a) in news.iter().enumerate() {
            for b in &news[a_i + 1..] {
                summary.claim_pairs_checked += 1;
                let a_then_b = b.end + EXPIRY_MARGIN_MS >= a.start + a.ttl_ms;
                let b_then_a = a.end + EXPIRY_MARGIN_MS >= b.start + b.ttl_ms;
                if a_then_b || b_then_a {
                    continue;
                }
                // Either may have been first (they may overlap): a wipe
                // before the other's end may have lost the first one's key.
                if checker.lost_to_wipe(key, a, b.end) || checker.lost_to_wipe(key, b, a.end) {
                    summary.absent_exempt_by_wipe += 1;
                    continue;
                }
                let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
                report(format!(
                    "claimed twice: {key} answered \"new\" at [{}..{}] ms (ttl {} s) and at [{}..{}] ms (ttl {} s)",
                    first.start,
                    first.end,
                    first.ttl_ms / 1000,
                    second.start,
                    second.end,
                    second.ttl_ms / 1000
                ));
            }
        }
    }
    violations
}
