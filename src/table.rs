//! The per-range table: fingerprint → max-expiry, with its expiry sweep.
//!
//! Pure data structure: it takes `now` as an argument and knows nothing of
//! actors, I/O or wall-clock time, so it is tested with plain unit and
//! property tests.
//!
//! # Layout
//!
//! An ordered linear-probing hash table over 16-byte slots (`Slot`): 64 + 32
//! fingerprint bits and a 32-bit expiry (Unix seconds; 0 marks an empty slot).
//! The 96 stored bits are the low 64 bits of the fingerprint and its top 32
//! bits, which the range (`(fp >> 64) % R`) does not imply for any power-of-two
//! `R` up to 2³²; DESIGN.md asks for at least 96 independent bits.
//!
//! A key's home slot is `(lo * home_slots) >> 64` ("fastrange"), which is
//! monotone in `lo`, and every run of occupied slots is kept sorted by key.
//! Together these keep the whole slot array sorted, which buys three things:
//! - a lookup of an absent key stops at the first larger key, so misses cost
//!   about as much as hits even at 80 % load;
//! - any capacity works, not just powers of two, so the table grows by 25 %
//!   and stays between 64 % and 80 % full: 20 to 25 bytes per key, with no
//!   separate control bytes and no per-key expiry index;
//! - rebuilding into another capacity is one sequential pass, and iteration
//!   yields keys in fingerprint order.
//!
//! Expiry is checked on every read (`now < expiry`), and memory is reclaimed
//! by [`RangeTable::sweep`], which visits a bounded number of slots per call
//! with a cursor and shrinks the table when it gets sparse.

use crate::fingerprint::{Expiry, TableKey};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    lo: u64,
    hi: u32,
    /// 0 = empty. Otherwise bit 31 is the dirty bit (changed since the last
    /// [`RangeTable::take_dirty`]) and bits 0..31 are the expiry in seconds
    /// since [`STAMP_BASE`], at least 1.
    stamp: u32,
}

/// Expiries are stored relative to 2020-01-01T00:00:00Z, which leaves 31 bits
/// (until 2088) beside the dirty bit.
pub const STAMP_BASE: u32 = 1_577_836_800;
const DIRTY: u32 = 1 << 31;
const STAMP_MASK: u32 = DIRTY - 1;
/// Latest expiry a table can hold; later ones are clamped to it.
pub const MAX_EXPIRY: Expiry = STAMP_BASE + STAMP_MASK;

fn stamp(expiry: Expiry) -> u32 {
    expiry.saturating_sub(STAMP_BASE).clamp(1, STAMP_MASK) | DIRTY
}

impl Slot {
    fn new(key: TableKey, expiry: Expiry) -> Self {
        Slot { lo: key.lo, hi: key.hi, stamp: stamp(expiry) }
    }

    fn key(&self) -> TableKey {
        TableKey { lo: self.lo, hi: self.hi }
    }

    fn is_empty(&self) -> bool {
        self.stamp == 0
    }

    fn expiry(&self) -> Expiry {
        debug_assert!(!self.is_empty());
        STAMP_BASE + (self.stamp & STAMP_MASK)
    }

    fn is_dirty(&self) -> bool {
        self.stamp & DIRTY != 0
    }

    /// Sets a new expiry and marks the slot dirty.
    fn set_expiry(&mut self, expiry: Expiry) {
        self.stamp = stamp(expiry);
    }
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

const MIN_HOME_SLOTS: usize = 16;

/// A table of keys with their expiry. See the module docs for the layout.
#[derive(Debug, Clone)]
pub struct RangeTable {
    /// Sorted by key among occupied slots; `len() >= home_slots`. Slots past
    /// `home_slots` are overflow for runs that start near the end.
    slots: Vec<Slot>,
    /// Number of home positions the hash maps onto.
    home_slots: usize,
    /// Occupied slots, expired-but-unswept ones included.
    len: usize,
    /// Where the next sweep resumes.
    sweep_cursor: usize,
    /// Slots visited by lookups and moved by inserts (tests only): the
    /// cost model the tests check instead of timings.
    #[cfg(test)]
    work: tests::Work,
}

impl Default for RangeTable {
    fn default() -> Self {
        Self::with_home_slots(MIN_HOME_SLOTS)
    }
}

impl RangeTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_home_slots(home_slots: usize) -> Self {
        let home_slots = home_slots.max(MIN_HOME_SLOTS);
        RangeTable {
            slots: vec![Slot::default(); home_slots + overflow_slots(home_slots)],
            home_slots,
            len: 0,
            sweep_cursor: 0,
            #[cfg(test)]
            work: tests::Work::default(),
        }
    }

    /// Entries held, including expired ones the sweep has not reached yet.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    fn home(&self, lo: u64) -> usize {
        ((u128::from(lo) * self.home_slots as u128) >> 64) as usize
    }

    /// Hints the CPU to load the cache line where a probe for `key` starts.
    /// A batch prefetches all its keys before probing any, so that their
    /// cache misses overlap instead of queueing one after the other.
    #[inline]
    pub fn prefetch(&self, key: TableKey) {
        #[cfg(target_arch = "x86_64")]
        if let Some(slot) = self.slots.get(self.home(key.lo)) {
            // SAFETY: a prefetch is only a hint and never faults; the pointer
            // is to a live slot anyway.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (slot as *const Slot).cast::<i8>(),
                )
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// `Ok(index)` of the key, or `Err(index)` where it would be inserted.
    fn find(&self, key: TableKey) -> Result<usize, usize> {
        let mut i = self.home(key.lo);
        while let Some(slot) = self.slots.get(i) {
            #[cfg(test)]
            self.work.add(1);
            if slot.is_empty() {
                return Err(i);
            }
            match slot.key().cmp(&key) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => return Ok(i),
                std::cmp::Ordering::Greater => return Err(i),
            }
        }
        Err(i)
    }

    /// Expiry of the key if it is stored (expired or not).
    pub fn expiry(&self, key: TableKey) -> Option<Expiry> {
        self.find(key).ok().map(|i| self.slots[i].expiry())
    }

    /// Does the key exist at `now`?
    pub fn contains(&self, key: TableKey, now: u32) -> bool {
        self.expiry(key).is_some_and(|e| now < e)
    }

    /// Sets `expiry = max(current, expiry)`; an `expiry` already past at
    /// `now` is ignored. This is the one merge rule of KeyDB (puts, WAL
    /// replay, snapshot loads). Returns true if the stored expiry changed.
    pub fn merge(&mut self, key: TableKey, expiry: Expiry, now: u32) -> bool {
        if expiry <= now {
            return false;
        }
        match self.find(key) {
            Ok(i) => {
                let slot = &mut self.slots[i];
                if slot.expiry() < expiry.min(MAX_EXPIRY) {
                    slot.set_expiry(expiry);
                    true
                } else {
                    false
                }
            }
            Err(i) => {
                self.insert_at(i, Slot::new(key, expiry));
                true
            }
        }
    }

    /// Makes room for `additional` more entries at once. A batch merged in
    /// key order (a checkpoint, a segment) must get it first: grown on the
    /// way, the table is sized for the keys so far, which all hash below the
    /// next one, so they pile up in one run that every insert walks
    /// (quadratic; a 100 M-key restart took hours).
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want.saturating_mul(5) > self.home_slots.saturating_mul(4) {
            self.rebuild(want.saturating_mul(25) / 16);
        }
    }

    /// Deduplication: did the key exist at `now`? If not, store it with
    /// `expiry` (an existing key keeps its expiry, like Redis `SET NX EX`).
    pub fn claim(&mut self, key: TableKey, expiry: Expiry, now: u32) -> bool {
        debug_assert!(expiry > now);
        match self.find(key) {
            Ok(i) if now < self.slots[i].expiry() => true,
            Ok(i) => {
                // An expired entry: max-merge still holds, since expiry > now >= old.
                self.slots[i].set_expiry(expiry);
                false
            }
            Err(i) => {
                self.insert_at(i, Slot::new(key, expiry));
                false
            }
        }
    }

    fn insert_at(&mut self, mut i: usize, slot: Slot) {
        if (self.len + 1) * 5 > self.home_slots * 4 {
            self.rebuild((self.len + 1) * 25 / 16);
            // unwrap_err: the key was absent before the rebuild.
            i = self.find(slot.key()).unwrap_err();
        }
        let empty = match self.slots[i..].iter().position(|s| s.is_empty()) {
            Some(offset) => i + offset,
            None => {
                // The run reaches the end of the overflow area: extend it.
                self.slots.reserve_exact(overflow_slots(self.home_slots));
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        #[cfg(test)]
        self.work.add((empty - i) as u64);
        self.slots.copy_within(i..empty, i + 1);
        self.slots[i] = slot;
        self.len += 1;
    }

    fn remove_at(&mut self, i: usize) {
        debug_assert!(!self.slots[i].is_empty());
        let mut hole = i;
        let mut j = i + 1;
        // Backward shift: pull the rest of the run left while its entries
        // are not at their home slot. Sortedness makes this stop correctly.
        while let Some(&next) = self.slots.get(j) {
            if next.is_empty() || self.home(next.lo) > hole {
                break;
            }
            self.slots[hole] = next;
            hole = j;
            j += 1;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }

    /// Moves every entry into a table with `home_slots` home positions.
    fn rebuild(&mut self, home_slots: usize) {
        let mut next = RangeTable::with_home_slots(home_slots);
        let mut last: Option<usize> = None;
        for slot in self.slots.iter().filter(|s| !s.is_empty()) {
            let pos = match last {
                Some(l) => next.home(slot.lo).max(l + 1),
                None => next.home(slot.lo),
            };
            if pos >= next.slots.len() {
                next.slots.push(Slot::default());
            }
            next.slots[pos] = *slot;
            last = Some(pos);
        }
        next.len = self.len;
        #[cfg(test)]
        {
            next.work = self.work.clone();
            next.work.add(self.slots.len() as u64);
        }
        *self = next;
    }

    /// Visits up to `budget` slots from the sweep cursor, removing entries
    /// expired at `now`, and shrinks the table once it is sparse. Returns the
    /// number of entries removed. Call it often with a small budget: its cost
    /// is proportional to `budget` (plus a rare shrink).
    pub fn sweep(&mut self, now: u32, budget: usize) -> usize {
        let mut removed = 0;
        let mut visited = 0;
        while visited < budget {
            if self.sweep_cursor >= self.slots.len() {
                self.sweep_cursor = 0;
                if self.len * 5 < self.home_slots && self.home_slots > MIN_HOME_SLOTS {
                    self.rebuild(self.len * 25 / 16);
                }
                break;
            }
            let slot = self.slots[self.sweep_cursor];
            visited += 1;
            if !slot.is_empty() && slot.expiry() <= now {
                // The next entry may shift into this slot: look at it again.
                self.remove_at(self.sweep_cursor);
                removed += 1;
            } else {
                self.sweep_cursor += 1;
            }
        }
        removed
    }

    /// Slots a full sweep pass visits.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every stored entry (expired ones included), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (TableKey, Expiry)> + '_ {
        self.slots.iter().filter(|s| !s.is_empty()).map(|s| (s.key(), s.expiry()))
    }

    /// Entries changed since the previous call (or since they were inserted),
    /// in key order; their dirty bits are cleared. This is what an
    /// incremental snapshot writes. Entries expired at `now` are left out.
    pub fn take_dirty(&mut self, now: u32) -> Vec<(TableKey, Expiry)> {
        let mut out = Vec::new();
        for slot in self.slots.iter_mut().filter(|s| s.is_dirty()) {
            slot.stamp &= !DIRTY;
            if now < slot.expiry() {
                out.push((slot.key(), slot.expiry()));
            }
        }
        out
    }

    /// Clears every dirty bit: the entries are known to be in the object store.
    pub fn clear_dirty(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.stamp &= !DIRTY;
        }
    }

    /// Every entry unexpired at `now`, in key order, and clears every dirty
    /// bit: what a full snapshot writes.
    pub fn take_all(&mut self, now: u32) -> Vec<(TableKey, Expiry)> {
        let mut out = Vec::with_capacity(self.len);
        for slot in self.slots.iter_mut().filter(|s| !s.is_empty()) {
            slot.stamp &= !DIRTY;
            if now < slot.expiry() {
                out.push((slot.key(), slot.expiry()));
            }
        }
        out
    }
}

fn overflow_slots(home_slots: usize) -> usize {
    8 + home_slots / 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(n: u64) -> TableKey {
        TableKey::from(Fingerprint::of(&n.to_le_bytes()))
    }

    impl RangeTable {
        /// Every invariant the layout relies on.
        fn check(&self) {
            let occupied: Vec<(usize, &Slot)> =
                self.slots.iter().enumerate().filter(|(_, s)| !s.is_empty()).collect();
            assert_eq!(occupied.len(), self.len);
            assert!(occupied.windows(2).all(|w| w[0].1.key() < w[1].1.key()), "not sorted");
            for (pos, slot) in occupied {
                let home = self.home(slot.lo);
                assert!(home <= pos, "entry before its home");
                assert!(self.slots[home..pos].iter().all(|s| !s.is_empty()), "gap in run");
            }
        }
    }

    /// Slots visited or moved, shared by a table's clones over rebuilds.
    #[derive(Debug, Default)]
    pub(super) struct Work(std::sync::atomic::AtomicU64);

    impl Clone for Work {
        fn clone(&self) -> Self {
            Work(std::sync::atomic::AtomicU64::new(self.get()))
        }
    }

    impl Work {
        pub(super) fn add(&self, n: u64) {
            self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }

        fn get(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// Slots touched per entry to merge `entries` (sorted) into `t`.
    fn work_per_entry(t: &mut RangeTable, entries: &[(TableKey, Expiry)]) -> f64 {
        let before = t.work.get();
        crate::restore::merge_all(t, entries, T);
        t.check();
        (t.work.get() - before) as f64 / entries.len() as f64
    }

    fn sorted(range: std::ops::Range<u64>) -> Vec<(TableKey, Expiry)> {
        let mut entries: Vec<(TableKey, Expiry)> = range.map(|n| (key(n), T + 100)).collect();
        entries.sort();
        entries
    }

    /// The load paths (checkpoint, segments, handoff) merge batches in key
    /// order: the cost per key must not grow with the keys.
    #[test]
    fn merging_in_key_order_costs_the_same_per_key_at_any_size() {
        let mut small = RangeTable::new();
        let per_key_small = work_per_entry(&mut small, &sorted(0..20_000));
        let mut large = RangeTable::new();
        let per_key_large = work_per_entry(&mut large, &sorted(0..200_000));
        assert_eq!(large.len(), 200_000);
        // Grown on the way instead, each key walks a run of all the keys
        // before it: thousands of slots per key at this size.
        assert!(per_key_large < 20.0, "{per_key_large:.1} slots per key at 200 k");
        assert!(
            per_key_large < per_key_small * 1.5,
            "{per_key_small:.1} at 20 k, {per_key_large:.1} at 200 k"
        );
        // A second sorted batch on top (a segment after a checkpoint).
        let per_key_more = work_per_entry(&mut large, &sorted(200_000..400_000));
        assert_eq!(large.len(), 400_000);
        assert!(per_key_more < 20.0, "{per_key_more:.1} slots per key for a second batch");
    }

    /// A realistic "now": stamps are relative to 2020.
    const T: u32 = 1_800_000_000;

    #[test]
    fn merge_is_max() {
        let mut t = RangeTable::new();
        assert!(t.merge(key(1), T + 100, T + 10));
        assert!(!t.merge(key(1), T + 50, T + 10));
        assert_eq!(t.expiry(key(1)), Some(T + 100));
        assert!(t.merge(key(1), T + 200, T + 10));
        assert_eq!(t.expiry(key(1)), Some(T + 200));
        assert!(!t.merge(key(2), T + 10, T + 10), "already expired entries are not stored");
        assert_eq!(t.len(), 1);
        // Expiries past what a stamp holds are clamped, and still merge as max.
        assert!(t.merge(key(3), u32::MAX, T));
        assert_eq!(t.expiry(key(3)), Some(MAX_EXPIRY));
        assert!(!t.merge(key(3), u32::MAX, T));
    }

    #[test]
    fn claim_semantics() {
        let mut t = RangeTable::new();
        assert!(!t.claim(key(1), T + 100, T + 10));
        assert!(t.claim(key(1), T + 500, T + 20));
        assert_eq!(t.expiry(key(1)), Some(T + 100), "claim keeps an existing expiry");
        assert!(!t.claim(key(1), T + 300, T + 100), "an expired key is claimable again");
        assert_eq!(t.expiry(key(1)), Some(T + 300));
    }

    #[test]
    fn dirty_tracking() {
        let mut t = RangeTable::new();
        for n in 0..100 {
            t.merge(key(n), T + 100, T);
        }
        assert_eq!(t.take_dirty(T).len(), 100);
        assert!(t.take_dirty(T).is_empty());
        t.merge(key(5), T + 50, T); // no change: not dirty
        t.merge(key(6), T + 200, T);
        t.claim(key(7), T + 300, T); // existed: not dirty
        t.claim(key(1000), T + 300, T);
        let dirty = t.take_dirty(T);
        let mut want = vec![(key(6), T + 200), (key(1000), T + 300)];
        want.sort();
        assert_eq!(dirty, want);
        // Dirty bits survive growth and shifting.
        for n in 2000..30_000 {
            t.merge(key(n), T + 100, T);
        }
        assert_eq!(t.take_dirty(T).len(), 28_000);
        assert_eq!(t.take_all(T).len(), 28_101);
        assert!(t.take_dirty(T).is_empty());
    }

    #[test]
    fn grows_shrinks_and_sweeps() {
        let mut t = RangeTable::new();
        for n in 0..100_000 {
            t.merge(key(n), if n % 2 == 0 { T + 50 } else { T + 500 }, T);
        }
        t.check();
        assert_eq!(t.len(), 100_000);
        let bytes = t.heap_bytes() as f64 / t.len() as f64;
        assert!(bytes < 26.0, "{bytes} bytes per key");
        let mut removed = 0;
        while removed < 50_000 {
            removed += t.sweep(T + 100, 1000);
        }
        t.check();
        assert_eq!(t.len(), 50_000);
        for n in 0..100_000 {
            assert_eq!(t.contains(key(n), T + 100), n % 2 == 1);
        }
        // Everything expires: a few full passes shrink the table back.
        for _ in 0..1000 {
            t.sweep(T + 1000, 1000);
        }
        t.check();
        assert!(t.is_empty());
        assert!(t.heap_bytes() < 4096, "{} bytes left", t.heap_bytes());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Merge(u8, u32),
        Claim(u8, u32),
        Sweep(u16),
        Tick(u8),
        TakeDirty,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 1u32..50).prop_map(|(k, t)| Op::Merge(k, t)),
            3 => (any::<u8>(), 1u32..50).prop_map(|(k, t)| Op::Claim(k, t)),
            1 => (1u16..300).prop_map(Op::Sweep),
            1 => (0u8..20).prop_map(Op::Tick),
            1 => Just(Op::TakeDirty),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The table against a `HashMap` model, with time passed in.
        #[test]
        fn behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..600)) {
            let mut t = RangeTable::new();
            let mut model: HashMap<u8, u32> = HashMap::new();
            // Keys whose expiry changed since the last TakeDirty.
            let mut changed: std::collections::BTreeSet<u8> = Default::default();
            let mut now = T;
            for op in ops {
                match op {
                    Op::Merge(k, ttl) => {
                        t.merge(key(k.into()), now + ttl, now);
                        let e = model.entry(k).or_insert(0);
                        if *e < now + ttl {
                            *e = now + ttl;
                            changed.insert(k);
                        }
                    }
                    Op::Claim(k, ttl) => {
                        let existed = model.get(&k).is_some_and(|&e| now < e);
                        prop_assert_eq!(t.claim(key(k.into()), now + ttl, now), existed);
                        if !existed {
                            model.insert(k, now + ttl);
                            changed.insert(k);
                        }
                    }
                    Op::Sweep(budget) => {
                        t.sweep(now, budget.into());
                    }
                    Op::Tick(dt) => now += u32::from(dt),
                    Op::TakeDirty => {
                        let mut got: Vec<(TableKey, u32)> = t.take_dirty(now);
                        let mut want: Vec<(TableKey, u32)> = std::mem::take(&mut changed)
                            .into_iter()
                            .filter(|k| now < model[k])
                            .map(|k| (key(k.into()), model[&k]))
                            .collect();
                        got.sort();
                        want.sort();
                        prop_assert_eq!(got, want);
                    }
                }
                for k in 0..=255u8 {
                    let want = model.get(&k).is_some_and(|&e| now < e);
                    prop_assert_eq!(t.contains(key(k.into()), now), want, "key {}", k);
                }
            }
            t.check();
            prop_assert!(t.len() >= model.values().filter(|&&e| now < e).count());
        }
    }
}
