//! The per-range table: fingerprint → max-expiry, with its expiry sweep.
//!
//! Pure data structure: it takes `now` as an argument and knows nothing of
//! actors, I/O or wall-clock time, so it is tested with plain unit and
//! property tests.
//!
//! # Layout
//!
//! A range's keys are split by the top bits of `lo` into *parts*
//! (extendible hashing): a part holds the keys whose `lo` starts with its
//! `prefix` of `depth` bits, and a directory indexed by the top `D` bits of
//! `lo` (`D`, the depth of the deepest part) names every key's part. The
//! parts are kept in key order, so the table iterates in fingerprint order.
//!
//! Each part is an ordered linear-probing hash table over 16-byte slots
//! (`Slot`): the 96 bits of a [`TableKey`] and a 32-bit expiry (Unix
//! seconds; 0 marks an empty slot). A key's home slot in its part is
//! `((lo << depth) * home_slots) >> 64` ("fastrange" over the bits below
//! the prefix), which is monotone in `lo`, and every run of occupied slots
//! is kept sorted by key. Together these keep a part's slot array sorted,
//! which buys three things:
//! - a lookup of an absent key stops at the first larger key, so misses cost
//!   about as much as hits even at 80 % load;
//! - any capacity works, not just powers of two, so a part grows by 25 % and
//!   stays between 64 % and 80 % full: 20 to 25 bytes per key, with no
//!   separate control bytes and no per-key expiry index;
//! - rebuilding into another capacity, or splitting a part in two, is one
//!   sequential pass.
//!
//! # Growth without stalls
//!
//! A part that is full rebuilds itself 25 % larger; past [`SPLIT_KEYS`] keys
//! it splits in two by the next bit of `lo` instead. No insert moves more
//! than one part's slots (at most about 1.6 × [`SPLIT_KEYS`], under a
//! millisecond), whatever the range holds, and only one part's old and new
//! arrays coexist meanwhile. (A range holding its table in one array
//! rebuilt it whole: 16 MB at 100 M keys on a node, about 10 ms during
//! which every request touching the range waited.) A part's
//! capacities follow its own ladder of 25 % steps, started at a point that
//! depends on the part ([`home_slots_for`]): the parts fill at the same pace
//! (the hash is uniform), and with one ladder they would all sit just after
//! a step, 64 % full, at the same time.
//!
//! Expiry is checked on every read (`now < expiry`), and memory is reclaimed
//! by [`RangeTable::sweep`], which visits a bounded number of slots per call
//! from a cursor (a key, so that it survives any rebuild), shrinks each part
//! it finishes when sparse, and merges it with its buddy when both are.

use crate::fingerprint::{Expiry, TableKey};
use crate::memory::{Zeroable, ZeroedArray};

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

// SAFETY: integers only; all zeroes is the empty slot (`Slot::default()`).
unsafe impl Zeroable for Slot {}

/// A part past this many keys splits in two instead of growing: the bound
/// on the work of one insert (a part has at most about 1.6 × this many
/// slots, 820 KB).
pub const SPLIT_KEYS: usize = 1 << 15;
/// The deepest a part gets: the directory has at most 2^12 entries (16 KB).
/// Past 2^12 × [`SPLIT_KEYS`] keys in one range (134 M; or keys chosen to
/// share their top bits), parts grow instead of splitting, as one array.
const MAX_DEPTH: u32 = 12;
/// The smallest capacity of a part is in `MIN_HOME_SLOTS..MIN_HOME_SLOTS * 5 / 4`.
const MIN_HOME_SLOTS: u64 = 16;

#[cfg(test)]
thread_local! {
    /// Slots visited by lookups and moved by inserts, rebuilds and splits
    /// on this thread (tests only): the cost model the tests check instead
    /// of timings.
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn work(_slots: usize) {
    #[cfg(test)]
    WORK.with(|w| w.set(w.get() + _slots as u64));
}

/// The slots this thread's tables have visited or moved so far (tests only).
#[cfg(test)]
pub(crate) fn work_done() -> u64 {
    WORK.with(|w| w.get())
}

/// The home slots of a part built for `keys` keys: the smallest step of its
/// ladder (×1.25 per step) with room for one more key at most 80 % full.
/// `phase` (16 bits) places the ladder's first step in
/// `MIN_HOME_SLOTS..MIN_HOME_SLOTS * 5 / 4`, so that parts with other
/// phases grow at other key counts; the ladder is kept in 16.16 fixed point
/// so that its steps do not drift to one sequence by rounding.
fn home_slots_for(keys: usize, phase: u16) -> usize {
    let mut step = (MIN_HOME_SLOTS << 16) + u64::from(phase) * (MIN_HOME_SLOTS / 4);
    while ((step >> 16) as usize).saturating_mul(4) < (keys + 1).saturating_mul(5) {
        step += step / 4;
    }
    (step >> 16) as usize
}

/// Extra slots past the home slots, for runs that start near the end.
fn overflow_slots(home_slots: usize) -> usize {
    8 + home_slots / 256
}

/// One part of a table: the keys whose `lo` starts with `prefix`.
#[derive(Debug, Clone)]
struct Part {
    /// Sorted by key among occupied slots; `len() >= home_slots`. Slots past
    /// `home_slots` are overflow for runs that start near the end. A large
    /// array is a mapping of its own: freed, its memory goes back to the OS
    /// at once (see [`crate::memory`]).
    slots: ZeroedArray<Slot>,
    /// Number of home positions the hash maps onto.
    home_slots: usize,
    /// Occupied slots, expired-but-unswept ones included.
    len: usize,
    /// The top `depth` bits of every `lo` in the part.
    prefix: u64,
    depth: u32,
    /// Where its capacity ladder starts ([`home_slots_for`]).
    phase: u16,
}

impl Part {
    /// A part holding `entries` (sorted, `len` of them, all within the
    /// prefix), sized for them.
    fn build(prefix: u64, depth: u32, entries: impl Iterator<Item = Slot> + Clone, len: usize) -> Part {
        // A phase that differs between parts and ranges (the first key's
        // top bits are independent of where the part sits).
        let first_hi = entries.clone().next().map_or(0, |s| u64::from(s.hi));
        let seed = prefix ^ (u64::from(depth) << 56) ^ (first_hi << 24);
        let phase = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u16;
        let mut part = Part { slots: ZeroedArray::new(0), home_slots: 0, len: 0, prefix, depth, phase };
        part.place(home_slots_for(len, phase), entries, len);
        part
    }

    fn home(&self, lo: u64) -> usize {
        ((u128::from(lo << self.depth) * self.home_slots as u128) >> 64) as usize
    }

    /// The first `lo` past the part (`None` for the last part).
    fn end(&self) -> Option<u64> {
        let next = (self.prefix + 1).checked_shl(64 - self.depth)?;
        (next != 0).then_some(next)
    }

    fn occupied(&self) -> impl Iterator<Item = &Slot> + Clone + '_ {
        self.slots.iter().filter(|s| !s.is_empty())
    }

    /// Would one more key take it past 80 % full?
    fn is_full(&self) -> bool {
        (self.len + 1) * 5 > self.home_slots * 4
    }

    /// Lays `entries` (sorted, `len` of them) out over `home_slots` home
    /// positions: one sequential pass.
    fn place(&mut self, home_slots: usize, entries: impl Iterator<Item = Slot>, len: usize) {
        self.home_slots = home_slots;
        self.len = len;
        let mut slots = ZeroedArray::new(home_slots + overflow_slots(home_slots));
        let mut next = 0;
        for slot in entries {
            let pos = self.home(slot.lo).max(next);
            if pos >= slots.len() {
                // The last run reaches past the overflow area: extend it.
                slots = slots.resized(slots.len() + overflow_slots(home_slots));
            }
            slots[pos] = slot;
            next = pos + 1;
        }
        self.slots = slots;
    }

    /// Moves every entry into an array with `home_slots` home positions.
    fn rebuild(&mut self, home_slots: usize) {
        work(self.slots.len());
        let old = std::mem::replace(&mut self.slots, ZeroedArray::new(0));
        self.place(home_slots, old.iter().filter(|s| !s.is_empty()).copied(), self.len);
    }

    /// `Ok(index)` of the key, or `Err(index)` where it would be inserted.
    fn find(&self, key: TableKey) -> Result<usize, usize> {
        let mut i = self.home(key.lo);
        while let Some(slot) = self.slots.get(i) {
            work(1);
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

    /// Inserts at `i` (from [`Part::find`]), shifting the rest of the run.
    fn insert_at(&mut self, i: usize, slot: Slot) {
        let empty = match self.slots[i..].iter().position(|s| s.is_empty()) {
            Some(offset) => i + offset,
            None => {
                // The run reaches the end of the overflow area: extend it.
                let end = self.slots.len();
                self.slots = self.slots.resized(end + overflow_slots(self.home_slots));
                end
            }
        };
        work(empty - i);
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
}

/// A table of keys with their expiry. See the module docs for the layout.
#[derive(Debug, Clone)]
pub struct RangeTable {
    /// In key order; together they cover every `lo`.
    parts: Vec<Part>,
    /// `1 << depth` entries: the index in `parts` of the part holding each
    /// top-`depth`-bit prefix of `lo`.
    dir: Vec<u32>,
    /// The depth of the deepest part.
    depth: u32,
    /// Entries held, expired-but-unswept ones included.
    len: usize,
    /// The next key the sweep visits: a key, not a position, so that the
    /// parts may grow, split and merge between sweeps.
    sweep_from: TableKey,
    /// Slots the table had when the current sweep pass started: a pass's
    /// budget per call is a share of it ([`RangeTable::sweep_budget`]), not
    /// of the slots left, which fall as the swept parts shrink and would
    /// leave the rest of the pass ever slower.
    pass_slots: usize,
    /// A part past this many keys splits ([`SPLIT_KEYS`]; tests make it
    /// small, to split and merge often).
    split_keys: usize,
}

impl Default for RangeTable {
    fn default() -> Self {
        Self::with_split_keys(SPLIT_KEYS)
    }
}

impl RangeTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_split_keys(split_keys: usize) -> Self {
        RangeTable {
            parts: vec![Part::build(0, 0, std::iter::empty(), 0)],
            dir: vec![0],
            depth: 0,
            len: 0,
            sweep_from: TableKey::default(),
            pass_slots: 0,
            split_keys,
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
        let slots: usize = self.parts.iter().map(|p| p.slots.heap_bytes()).sum();
        slots
            + self.parts.capacity() * std::mem::size_of::<Part>()
            + self.dir.capacity() * std::mem::size_of::<u32>()
    }

    /// Index in `parts` of the part that holds `lo`.
    fn part_of(&self, lo: u64) -> usize {
        self.dir[((u128::from(lo) << self.depth) >> 64) as usize] as usize
    }

    /// Hints the CPU to load the cache line where a probe for `key` starts.
    /// A batch prefetches all its keys before probing any, so that their
    /// cache misses overlap instead of queueing one after the other.
    #[inline]
    pub fn prefetch(&self, key: TableKey) {
        #[cfg(target_arch = "x86_64")]
        {
            let part = &self.parts[self.part_of(key.lo)];
            if let Some(slot) = part.slots.get(part.home(key.lo)) {
                // SAFETY: a prefetch is only a hint and never faults; the
                // pointer is to a live slot anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        (slot as *const Slot).cast::<i8>(),
                    )
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// Expiry of the key if it is stored (expired or not).
    pub fn expiry(&self, key: TableKey) -> Option<Expiry> {
        let part = &self.parts[self.part_of(key.lo)];
        part.find(key).ok().map(|i| part.slots[i].expiry())
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
        let p = self.part_of(key.lo);
        match self.parts[p].find(key) {
            Ok(i) => {
                let slot = &mut self.parts[p].slots[i];
                if slot.expiry() < expiry.min(MAX_EXPIRY) {
                    slot.set_expiry(expiry);
                    true
                } else {
                    false
                }
            }
            Err(i) => {
                self.insert(p, i, Slot::new(key, expiry));
                true
            }
        }
    }

    /// Deduplication: did the key exist at `now`? If not, store it with
    /// `expiry` (an existing key keeps its expiry, like Redis `SET NX EX`).
    pub fn claim(&mut self, key: TableKey, expiry: Expiry, now: u32) -> bool {
        debug_assert!(expiry > now);
        let p = self.part_of(key.lo);
        match self.parts[p].find(key) {
            Ok(i) if now < self.parts[p].slots[i].expiry() => true,
            Ok(i) => {
                // An expired entry: max-merge still holds, since expiry > now >= old.
                self.parts[p].slots[i].set_expiry(expiry);
                false
            }
            Err(i) => {
                self.insert(p, i, Slot::new(key, expiry));
                false
            }
        }
    }

    /// Makes room for `additional` more entries at once. A batch merged in
    /// key order (a checkpoint, a segment) must get it first: grown on the
    /// way, a part is sized for the keys so far, which all hash below the
    /// next one, so they pile up in one run that every insert walks
    /// (quadratic; a 100 M-key restart took hours). The hash spreads the
    /// batch over the parts by the share of the keys each covers; parts
    /// that would pass the split point are split first.
    pub fn reserve(&mut self, additional: usize) {
        let mut p = 0;
        let mut split = false;
        while p < self.parts.len() {
            let part = &self.parts[p];
            // This part's share of the batch, rounded up.
            let share = additional.div_ceil(1usize.checked_shl(part.depth).unwrap_or(usize::MAX));
            let want = part.len.saturating_add(share);
            if want > self.split_keys && part.depth < MAX_DEPTH {
                self.split(p);
                split = true;
                continue;
            }
            if want.saturating_mul(5) > part.home_slots.saturating_mul(4) {
                let home_slots = home_slots_for(want, part.phase);
                self.parts[p].rebuild(home_slots);
            }
            p += 1;
        }
        if split {
            self.fill_dir();
        }
    }

    /// Inserts `slot` at `i` of part `p` (from [`Part::find`]), making room
    /// first if the part is full.
    fn insert(&mut self, mut p: usize, mut i: usize, slot: Slot) {
        if self.parts[p].is_full() {
            let part = &mut self.parts[p];
            if part.len >= self.split_keys && part.depth < MAX_DEPTH {
                self.split(p);
                self.fill_dir();
                p = self.part_of(slot.lo);
            } else {
                part.rebuild(home_slots_for(part.len + 1, part.phase));
            }
            // unwrap_err: the key was absent before the part was rebuilt.
            i = self.parts[p].find(slot.key()).unwrap_err();
            debug_assert!(!self.parts[p].is_full());
        }
        self.parts[p].insert_at(i, slot);
        self.len += 1;
    }

    /// Splits part `p` in two by the bit of `lo` after its prefix: one pass
    /// over its slots. The directory is left for the caller to refill.
    fn split(&mut self, p: usize) {
        let part = &self.parts[p];
        debug_assert!(part.depth < MAX_DEPTH);
        work(part.slots.len());
        let depth = part.depth + 1;
        let bit = 1u64 << (64 - depth);
        // Sorted, and every `lo` shares the prefix: the left half comes first.
        let at = part.occupied().take_while(|s| s.lo & bit == 0).count();
        let entries = part.occupied().copied();
        let left = Part::build(part.prefix << 1, depth, entries.clone().take(at), at);
        let right = Part::build(part.prefix << 1 | 1, depth, entries.skip(at), part.len - at);
        self.parts[p] = left;
        self.parts.insert(p + 1, right);
        self.depth = self.depth.max(depth);
    }

    /// Merges part `p` with the next one, its buddy: one pass over both.
    /// The directory is left for the caller to refill.
    fn merge_with_next(&mut self, p: usize) {
        let (a, b) = (&self.parts[p], &self.parts[p + 1]);
        debug_assert!(a.depth == b.depth && a.prefix + 1 == b.prefix && a.prefix % 2 == 0);
        work(a.slots.len() + b.slots.len());
        let entries = a.occupied().chain(b.occupied()).copied();
        self.parts[p] = Part::build(a.prefix >> 1, a.depth - 1, entries, a.len + b.len);
        self.parts.remove(p + 1);
        while self.depth > 0 && self.parts.iter().all(|part| part.depth < self.depth) {
            self.depth -= 1;
        }
    }

    /// Points every directory entry at its part.
    fn fill_dir(&mut self) {
        self.dir.clear();
        self.dir.resize(1 << self.depth, 0);
        for (i, part) in self.parts.iter().enumerate() {
            let shift = self.depth - part.depth;
            let start = (part.prefix << shift) as usize;
            self.dir[start..start + (1 << shift)].fill(i as u32);
        }
        self.dir.shrink_to_fit();
    }

    /// Visits about `budget` slots from the sweep cursor, removing entries
    /// expired at `now`. Each part it finishes is shrunk if sparse, or
    /// merged with its buddy if both hold under a quarter of the split
    /// point. Returns the number of entries removed. Call it often with a
    /// small budget: a call stops at the first entry past `budget` slots
    /// or at the end of the part it is in, whichever comes later (at most
    /// one part more), so its cost is proportional to `budget` plus at most
    /// one part's. A call also stops at the end of a full pass.
    pub fn sweep(&mut self, now: u32, budget: usize) -> usize {
        if self.sweep_from == TableKey::default() {
            // A pass starts.
            self.pass_slots = self.slot_count();
        }
        let mut removed = 0;
        let mut visited = 0;
        loop {
            let p = self.part_of(self.sweep_from.lo);
            let part = &mut self.parts[p];
            let (Ok(mut i) | Err(mut i)) = part.find(self.sweep_from);
            while let Some(&slot) = part.slots.get(i) {
                if slot.is_empty() {
                    visited += 1;
                    i += 1;
                    continue;
                }
                // The cursor is a key: stop only at an entry.
                if visited >= budget {
                    self.sweep_from = slot.key();
                    return removed;
                }
                visited += 1;
                if slot.expiry() <= now {
                    // The next entry may shift into this slot: look at it again.
                    part.remove_at(i);
                    self.len -= 1;
                    removed += 1;
                } else {
                    i += 1;
                }
            }
            let end = part.end();
            self.tidy(p);
            match end {
                Some(lo) => self.sweep_from = TableKey { lo, hi: 0 },
                None => {
                    self.sweep_from = TableKey::default();
                    return removed;
                }
            }
            if visited >= budget {
                return removed;
            }
        }
    }

    /// After a sweep of part `p`: merges it with its buddy if both are
    /// nearly empty, or else shrinks it if it is under 40 % full (back to
    /// 64 - 80 %; it grows at 80 %, so a part never swings between the two).
    /// At 20 %, the bar before, a table whose keys had half expired kept
    /// its size: 60 bytes per live key.
    fn tidy(&mut self, p: usize) {
        let part = &self.parts[p];
        let buddy = if part.prefix % 2 == 0 { p + 1 } else { p.wrapping_sub(1) };
        if let Some(b) = self.parts.get(buddy) {
            if part.depth > 0 && b.depth == part.depth && part.len + b.len <= self.split_keys / 4 {
                self.merge_with_next(p.min(buddy));
                self.fill_dir();
                return;
            }
        }
        let part = &mut self.parts[p];
        let home_slots = home_slots_for(part.len, part.phase);
        if part.len * 5 < part.home_slots * 2 && home_slots < part.home_slots {
            part.rebuild(home_slots);
        }
    }

    /// The budget of one [`RangeTable::sweep`] call, so that a pass over
    /// the table takes about `calls` calls: a share of the slots the table
    /// had when the pass started (or has now, if more).
    pub fn sweep_budget(&self, calls: usize) -> usize {
        let pass = if self.sweep_from == TableKey::default() { 0 } else { self.pass_slots };
        pass.max(self.slot_count()) / calls.max(1)
    }

    /// Slots a full sweep pass visits.
    pub fn slot_count(&self) -> usize {
        self.parts.iter().map(|p| p.slots.len()).sum()
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.parts.iter().flat_map(|p| p.occupied())
    }

    fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot> + '_ {
        self.parts.iter_mut().flat_map(|p| p.slots.iter_mut().filter(|s| !s.is_empty()))
    }

    /// Every stored entry (expired ones included), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (TableKey, Expiry)> + '_ {
        self.slots().map(|s| (s.key(), s.expiry()))
    }

    /// Entries changed since the previous call (or since they were inserted),
    /// in key order; their dirty bits are cleared. This is what an
    /// incremental snapshot writes. Entries expired at `now` are left out.
    pub fn take_dirty(&mut self, now: u32) -> Vec<(TableKey, Expiry)> {
        let mut out = Vec::new();
        for slot in self.slots_mut().filter(|s| s.is_dirty()) {
            slot.stamp &= !DIRTY;
            if now < slot.expiry() {
                out.push((slot.key(), slot.expiry()));
            }
        }
        out
    }

    /// Clears every dirty bit: the entries are known to be in the object store.
    pub fn clear_dirty(&mut self) {
        for slot in self.slots_mut() {
            slot.stamp &= !DIRTY;
        }
    }

    /// Every entry unexpired at `now`, in key order, and clears every dirty
    /// bit: what a full snapshot writes.
    pub fn take_all(&mut self, now: u32) -> Vec<(TableKey, Expiry)> {
        let mut out = Vec::with_capacity(self.len);
        for slot in self.slots_mut() {
            slot.stamp &= !DIRTY;
            if now < slot.expiry() {
                out.push((slot.key(), slot.expiry()));
            }
        }
        out
    }
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

    impl Part {
        /// Every invariant a part's layout relies on.
        fn check(&self) {
            let occupied: Vec<(usize, &Slot)> =
                self.slots.iter().enumerate().filter(|(_, s)| !s.is_empty()).collect();
            assert_eq!(occupied.len(), self.len);
            assert!(self.slots.len() >= self.home_slots);
            assert!(occupied.windows(2).all(|w| w[0].1.key() < w[1].1.key()), "not sorted");
            for (pos, slot) in occupied {
                assert_eq!(
                    slot.lo.checked_shr(64 - self.depth).unwrap_or(0),
                    self.prefix,
                    "outside the prefix"
                );
                let home = self.home(slot.lo);
                assert!(home <= pos, "entry before its home");
                assert!(self.slots[home..pos].iter().all(|s| !s.is_empty()), "gap in run");
            }
        }
    }

    impl RangeTable {
        /// Every invariant the layout relies on.
        fn check(&self) {
            let mut next = Some(0u64);
            for (i, part) in self.parts.iter().enumerate() {
                part.check();
                assert!(part.depth <= self.depth && part.depth <= MAX_DEPTH);
                let start = part.prefix.checked_shl(64 - part.depth).unwrap_or(0);
                assert_eq!(Some(start), next, "parts not contiguous at part {i}");
                next = part.end();
                let shift = self.depth - part.depth;
                let at = (part.prefix << shift) as usize;
                assert!(self.dir[at..at + (1 << shift)].iter().all(|&d| d as usize == i), "directory");
            }
            assert_eq!(next, None, "the parts do not reach the end");
            assert_eq!(self.dir.len(), 1 << self.depth);
            assert!(self.parts.iter().any(|p| p.depth == self.depth), "directory deeper than the parts");
            assert_eq!(self.parts.iter().map(|p| p.len).sum::<usize>(), self.len);
            let keys: Vec<TableKey> = self.iter().map(|(k, _)| k).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "iteration not in key order");
        }
    }

    /// Slots touched per entry to merge `entries` (sorted) into `t`.
    fn work_per_entry(t: &mut RangeTable, entries: &[(TableKey, Expiry)]) -> f64 {
        let before = work_done();
        crate::restore::merge_all(t, entries, T);
        t.check();
        (work_done() - before) as f64 / entries.len() as f64
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
        // And the same batch again (a segment chain, a checkpoint merged with
        // the object store's copy): only lookups, and no growth.
        let bytes = large.heap_bytes();
        let per_key_again = work_per_entry(&mut large, &sorted(0..400_000));
        assert!(per_key_again < 20.0, "{per_key_again:.1} slots per key for a batch already held");
        assert_eq!(large.heap_bytes(), bytes, "room made for keys already held");
    }

    /// No insert waits for the whole range to be rebuilt: the most slots one
    /// insert touches is bounded by the split point, the same for a table
    /// 4 and 16 times its size. (A table in one array rebuilds all of it:
    /// about 1.6 × its keys.)
    #[test]
    fn no_insert_moves_more_than_a_part() {
        let worst_insert = |keys: u64| {
            let mut t = RangeTable::new();
            let mut worst = 0;
            for n in 0..keys {
                let before = work_done();
                t.merge(key(n), T + 100, T);
                worst = worst.max(work_done() - before);
            }
            t.check();
            assert!(t.parts.len() > 1);
            worst
        };
        let bound = 2 * SPLIT_KEYS as u64;
        let (at_4, at_16) = (worst_insert(4 * SPLIT_KEYS as u64), worst_insert(16 * SPLIT_KEYS as u64));
        assert!(at_4 <= bound, "{at_4} slots in one insert at {} keys", 4 * SPLIT_KEYS);
        assert!(at_16 <= bound, "{at_16} slots in one insert at {} keys", 16 * SPLIT_KEYS);
    }

    /// The parts' capacity ladders are staggered: at any size the table
    /// is 64–80 % full on average over its parts (20–25 bytes per key), not
    /// at 64 % for all of them at once just after they all grew.
    #[test]
    fn bytes_per_key_stay_low_at_every_size() {
        let mut t = RangeTable::new();
        let (mut lowest, mut highest) = (f64::MAX, 0f64);
        let mut n = 0;
        for size in (1..=40).map(|i| i * 25_000) {
            while n < size {
                t.merge(key(n), T + 100, T);
                n += 1;
            }
            // Past a few parts, so that there are ladders to stagger.
            if size >= 8 * SPLIT_KEYS as u64 {
                let bytes = t.heap_bytes() as f64 / t.len() as f64;
                lowest = lowest.min(bytes);
                highest = highest.max(bytes);
            }
        }
        t.check();
        // All at 64 % or all at 80 % would be 25 and 20 bytes per key.
        assert!(highest < 24.0, "up to {highest:.1} bytes per key");
        assert!(lowest > 21.0, "down to {lowest:.1} bytes per key");
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
        let mut t = RangeTable::with_split_keys(1000);
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
        // Dirty bits survive growth, splits and shifting.
        for n in 2000..30_000 {
            t.merge(key(n), T + 100, T);
        }
        assert!(t.parts.len() > 16);
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
        assert!(t.parts.len() >= 4, "{} parts", t.parts.len());
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
        // Half the keys gone: once a pass has finished, the parts are back
        // to 64 - 80 % full.
        for _ in 0..200 {
            t.sweep(T + 100, 1000);
        }
        let bytes = t.heap_bytes() as f64 / t.len() as f64;
        assert!(bytes < 26.0, "{bytes} bytes per key after half expired");
        // Everything expires: a few full passes shrink the table back and
        // merge its parts into one.
        for _ in 0..1000 {
            t.sweep(T + 1000, 1000);
        }
        t.check();
        assert!(t.is_empty());
        assert_eq!(t.parts.len(), 1);
        assert!(t.heap_bytes() < 4096, "{} bytes left", t.heap_bytes());
    }

    /// A sweep call's cost is its budget, plus at most the rest of a part.
    #[test]
    fn a_sweep_visits_about_its_budget() {
        let mut t = RangeTable::new();
        for n in 0..200_000 {
            t.merge(key(n), T + 50, T);
        }
        let parts = t.parts.len();
        let before = work_done();
        // Nothing has expired: the sweep walks, and stops at its budget.
        for _ in 0..100 {
            t.sweep(T, 1000);
        }
        let walked = work_done() - before;
        assert!(walked < 100 * 1100, "{walked} slots for 100 sweeps of 1000");
        assert_eq!(t.parts.len(), parts);
        // Everything expired: a pass removes it all, a part at a time.
        let mut removed = 0;
        while removed < 200_000 {
            removed += t.sweep(T + 60, 5000);
        }
        t.check();
    }

    /// A mass expiry is swept in about one pass of the calls the budget is
    /// made for, however the swept parts shrink meanwhile. Before, the
    /// budget was a share of the slots left, which fell as the swept parts
    /// shrank: the pass slowed down as it went (99 % expired: 368 calls of
    /// a 60-call budget to sweep it).
    #[test]
    fn a_mass_expiry_is_swept_in_about_one_pass() {
        let mut t = RangeTable::new();
        for n in 0..200_000u64 {
            t.merge(key(n), if n % 100 == 0 { T + 1000 } else { T + 10 }, T);
        }
        let mut calls = 0;
        while t.len() > 2000 {
            t.sweep(T + 20, t.sweep_budget(60).max(64));
            calls += 1;
            assert!(calls <= 120, "{} keys left after {calls} calls", t.len());
        }
        t.check();
        assert_eq!(t.len(), 2000);
    }

    /// Keys chosen to share their top bits cannot grow the directory past
    /// `MAX_DEPTH`: their part grows in one array instead.
    #[test]
    fn keys_sharing_their_top_bits_stop_splitting_at_the_deepest() {
        let mut t = RangeTable::with_split_keys(64);
        // Every `lo` starts with 20 zero bits.
        let keys: Vec<TableKey> = (0..5000).map(|n| TableKey { lo: key(n).lo >> 20, hi: n as u32 }).collect();
        for &k in &keys {
            t.merge(k, T + 100, T);
        }
        t.check();
        assert_eq!(t.depth, MAX_DEPTH);
        assert!(t.dir.len() <= 1 << MAX_DEPTH);
        assert!(keys.iter().all(|&k| t.contains(k, T)));
        assert_eq!(t.parts[0].len, 5000);
    }

    #[test]
    fn reserve_splits_ahead_of_a_batch() {
        let mut t = RangeTable::new();
        t.reserve(10 * SPLIT_KEYS);
        t.check();
        assert!(t.parts.len() >= 8, "{} parts", t.parts.len());
        let before = t.heap_bytes();
        let entries = sorted(0..10 * SPLIT_KEYS as u64);
        crate::restore::merge_all(&mut t, &entries, T);
        t.check();
        assert!(t.heap_bytes() < before * 5 / 4, "{} bytes reserved, {} used", before, t.heap_bytes());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Merge(u8, u32),
        Claim(u8, u32),
        Sweep(u16),
        Tick(u8),
        TakeDirty,
        Reserve(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 1u32..50).prop_map(|(k, t)| Op::Merge(k, t)),
            3 => (any::<u8>(), 1u32..50).prop_map(|(k, t)| Op::Claim(k, t)),
            1 => (1u16..300).prop_map(Op::Sweep),
            1 => (0u8..20).prop_map(Op::Tick),
            1 => Just(Op::TakeDirty),
            1 => any::<u8>().prop_map(Op::Reserve),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The table against a `HashMap` model, with time passed in. Parts
        /// split past 1 to 64 keys, so that splits and merges happen often.
        #[test]
        fn behaves_like_a_hashmap(
            ops in proptest::collection::vec(op(), 1..600),
            split_keys in 1usize..64,
        ) {
            let mut t = RangeTable::with_split_keys(split_keys);
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
                    Op::Reserve(n) => t.reserve(n.into()),
                }
                for k in 0..=255u8 {
                    let want = model.get(&k).is_some_and(|&e| now < e);
                    prop_assert_eq!(t.contains(key(k.into()), now), want, "key {}", k);
                }
            }
            t.check();
            prop_assert!(t.len() >= model.values().filter(|&&e| now < e).count());
            // The rest of the pass the cursor is in, then a full pass,
            // remove every expired entry.
            for _ in 0..2 {
                t.sweep(now, usize::MAX);
            }
            t.check();
            prop_assert_eq!(t.len(), model.values().filter(|&&e| now < e).count());
        }
    }
}
