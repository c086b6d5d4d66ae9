//! The scaling and persistence protocol, model checked with stateright.
//!
//! A few nodes, a few ranges and the object store, explored exhaustively:
//! every interleaving of client writes and claims, snapshots, checkpoints,
//! `local.json` records, restores, loads (also from chains loaded ahead of
//! the scale, `/prepareScale`), handoffs and their reports, view
//! refreshes, an operator scaling and calling `scaleComplete` (early too,
//! repeatedly, on any node), crashes with and without the disk, and
//! restarts. Every decision a node makes is `keydb::protocol`'s (and the
//! view's own `plan_for`, `supersedes` and `moved_ranges`); the model only
//! plays the actors, the disk and the store around them.
//!
//! Keys are abstracted as write ids per range (bit sets). A node is what
//! decides whether an id survives: its view; each range's protocol state
//! with its table, dirty ids and full-snapshot flag; the loader, handoff and
//! checkpoint tasks in flight and the reports on their way to the router;
//! its disk (WAL and checkpoint per range, `local.json`). The history holds
//! the acknowledged ids and the claims answered "new". A crash that loses
//! the disk forgives the ids only that disk held.
//!
//! Properties, at every state: a range that serves reads holds every
//! acknowledged id (no false "absent"); at most one node takes writes for a
//! range; no claim answers "new" twice; every range held passes
//! `protocol::check_range`. And since clients, faults and scales are
//! bounded, every run ends in a state where nothing more happens: there the
//! scales are complete and each range is served by its owner alone.
//!
//! Each operator call reads `cluster.json`, decides and writes it as one
//! step, as it would with conditional writes: two calls racing on plain
//! writes can put back an older view, which this model does not explore.
//! Expiry, and store or disk errors short of a crash, are not modelled.
//!
//! The checks stop at the first violation and print its path, the
//! shortest with `KEYDB_MODEL_THREADS=1`. `KEYDB_MODEL_LARGE=1` also checks
//! larger configurations (about 25 minutes).

use std::time::Instant;

use keydb::assignment;
use keydb::protocol::{
    self, Access, Admission, AdoptAction, Marks, Next, Range, RangeState, Role, StartFrom,
};
use keydb::view::{ClusterState, StoredView};
use stateright::{Checker, Expectation, HasDiscoveries, Model, Property};

/// Most nodes and ranges a configuration may have (fixed-size state).
const NODES: usize = 3;
const RANGES: usize = 4;

/// A set of write ids (bit i = id i).
type Ids = u16;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct View {
    epoch: u8,
    scaling: bool,
    nodes: u8,
    /// While scaling: the node count before.
    previous: u8,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scaling {
            write!(f, "e{} scaling {}->{}", self.epoch, self.previous, self.nodes)
        } else {
            write!(f, "e{} stable {}", self.epoch, self.nodes)
        }
    }
}

/// What the object store holds of one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
struct StoredRange {
    /// The ids in the segments its manifest names.
    chain: Ids,
    /// The epoch of its handoff mark (0: none).
    handoff: u8,
    /// The epoch of its load mark (0: none).
    loaded: u8,
}

/// A range held by a node: its range actor and the tasks working on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Slot {
    range: Range,
    /// Restoring at start, from where (`None` once restored, and for a
    /// range gained while running).
    start: Option<StartFrom>,
    table: Ids,
    dirty: Ids,
    /// The next snapshot is full: it supersedes the chain.
    full: bool,
    /// A loader is running, for this epoch.
    loader: Option<u8>,
    /// A handoff is running, for this epoch.
    handoff: Option<u8>,
    /// A checkpoint whose report sets `on_disk` is running.
    checkpoint: bool,
}

impl Slot {
    fn new(range: Range, start: Option<StartFrom>) -> Slot {
        Slot { range, start, table: 0, dirty: 0, full: false, loader: None, handoff: None, checkpoint: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
struct Disk {
    wal: [Ids; RANGES],
    checkpoint: [Option<Ids>; RANGES],
    /// `local.json`: the ranges listed complete (bit r), and the epoch of
    /// the view they were recorded under.
    listed: u16,
    listed_epoch: u8,
}

impl Disk {
    fn has(&self, r: usize) -> Ids {
        self.wal[r] | self.checkpoint[r].unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Node {
    up: bool,
    view: View,
    /// The restorer has opened the WAL (and restored the disk's ranges).
    wal_open: bool,
    slots: [Option<Slot>; RANGES],
    /// Ranges gained before the WAL was open; they load once it is.
    gained_early: u16,
    /// `RangeLoaded` / `HandedOff` reports on their way to the router.
    loaded_reports: u16,
    handoff_reports: u16,
    /// A `local.json` record on its way to the disk (see [`Records`]):
    /// what it lists, under which epoch, and the checkpoints it deletes.
    record_pending: bool,
    pending_listed: u16,
    pending_epoch: u8,
    forget: u16,
    disk: Disk,
    /// Tables loaded ahead of a scale (`/prepareScale`): the chain's ids
    /// as read then. Kept in memory until the next view adopted.
    ahead: [Option<Ids>; RANGES],
    /// A load once started from a table loaded ahead that held ids (for
    /// the property that shows loading ahead is explored at all).
    loaded_ahead: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    store_view: View,
    store: [StoredRange; RANGES],
    nodes: [Node; NODES],
    /// Acknowledged ids per range.
    acked: [Ids; RANGES],
    /// Ids a claim answered "new" for.
    claimed: Ids,
    claimed_twice: bool,
    next_id: u8,
    crashes: u8,
    disk_losses: u8,
    scales: u8,
    completions: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// A client claims (or puts) a new id in range `r` at node `k`.
    Write(usize, usize),
    /// A client claims an id already acknowledged.
    Reclaim(usize, usize, u8),
    Snapshot(usize, usize),
    /// The periodic local checkpoint of every range, truncating the WAL.
    CheckpointAll(usize),
    /// The checkpoint of a range that became `Serving`, and its report.
    CheckpointRange(usize, usize),
    /// The snapshot actor writes the router's last `local.json` record.
    RecordLocal(usize),
    /// The restorer opens the WAL and restores the ranges started from disk.
    RestoreLocal(usize),
    RestoreFromStore(usize, usize),
    LoadStep(usize, usize),
    /// `/prepareScale`: node `k` loads range `r`'s chain ahead of the next
    /// scale, which gives it the range (again: what the chain gained since).
    LoadAhead(usize, usize),
    HandoffStep(usize, usize),
    ReportLoaded(usize, usize),
    ReportHandedOff(usize, usize),
    /// The node re-reads `cluster.json` (every 5 s, or told by a client).
    Refresh(usize),
    /// The operator's `/scale` at a node, to the next size of the plan.
    Scale(usize),
    ScaleComplete(usize),
    Crash(usize),
    CrashLosingDisk(usize),
    Restart(usize),
}

/// One configuration to check.
#[derive(Clone, Debug)]
struct Config {
    /// Node processes (the views use a prefix of them).
    nodes: usize,
    ranges: u32,
    initial_nodes: u8,
    /// The sizes the operator scales to, in order.
    scales: Vec<u8>,
    writes: u8,
    /// The ranges clients write to.
    write_ranges: Vec<usize>,
    reclaims: bool,
    crashes: u8,
    disk_losses: u8,
    records: Records,
    /// The operator loads the moving ranges ahead before each scale.
    ahead: bool,
}

/// When the router's `local.json` records reach the disk. The snapshot
/// actor writes them in order, before any checkpoint asked for after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    /// With the change that made them.
    AtOnce,
    /// Each when the next is made, or never if the node stops first.
    OneBehind,
    /// At any time later (as if any number were lost), or never.
    Late,
}

/// A view the model can reach, with what the real code derives from it.
struct KnownView {
    view: View,
    stored: StoredView,
    /// Role of each range for each node, from `StoredView::plan_for`.
    roles: [[Role; RANGES]; NODES],
    /// Owner of each range, from `assignment::owners`.
    owners: [u32; RANGES],
}

struct KeyDb {
    cfg: Config,
    known: Vec<KnownView>,
}

impl KeyDb {
    fn new(cfg: Config) -> KeyDb {
        assert!(cfg.nodes <= NODES && cfg.ranges as usize <= RANGES && cfg.writes <= 16);
        let mut views = vec![View { epoch: 1, scaling: false, nodes: cfg.initial_nodes, previous: 0 }];
        let mut previous = cfg.initial_nodes;
        for (i, &nodes) in cfg.scales.iter().enumerate() {
            let epoch = i as u8 + 2;
            views.push(View { epoch, scaling: true, nodes, previous });
            views.push(View { epoch, scaling: false, nodes, previous: 0 });
            previous = nodes;
        }
        let list = |n: u8| (0..n).map(|i| format!("n{i}:1")).collect::<Vec<_>>();
        let known = views
            .into_iter()
            .map(|view| {
                let stored = StoredView {
                    epoch: u64::from(view.epoch),
                    addresses: list(view.nodes),
                    total_hash_ranges: cfg.ranges,
                    state: if view.scaling { ClusterState::Scaling } else { ClusterState::Stable },
                    previous_addresses: view.scaling.then(|| list(view.previous)),
                    cluster_id: "c".into(),
                };
                let mut roles = [[Role::NotOwned; RANGES]; NODES];
                for (node, roles) in roles.iter_mut().enumerate().take(cfg.nodes) {
                    let plan = stored.plan_for(node as u32);
                    for (ranges, role) in
                        [(&plan.kept, Role::Kept), (&plan.gained, Role::Gained), (&plan.lost, Role::Lost)]
                    {
                        for &r in ranges {
                            roles[r as usize] = role;
                        }
                    }
                }
                let mut owners = [u32::MAX; RANGES];
                for (r, owner) in
                    assignment::owners(cfg.ranges, u32::from(view.nodes)).into_iter().enumerate()
                {
                    owners[r] = owner;
                }
                KnownView { view, stored, roles, owners }
            })
            .collect();
        KeyDb { cfg, known }
    }

    fn known(&self, v: View) -> &KnownView {
        // unwrap: every view the model makes is listed in `new`.
        self.known.iter().find(|k| k.view == v).unwrap()
    }

    fn owned(&self, v: View, node: usize, r: usize) -> bool {
        self.known(v).owners[r] == node as u32
    }

    fn ranges(&self) -> std::ops::Range<usize> {
        0..self.cfg.ranges as usize
    }

    fn listing(node: &Node) -> u16 {
        let mut listed = 0;
        for (r, slot) in node.slots.iter().enumerate() {
            if slot.is_some_and(|s| s.range.listed_complete()) {
                listed |= 1 << r;
            }
        }
        listed
    }

    /// The router tells the snapshot actor what `local.json` lists now and
    /// which checkpoints to delete (`publish`).
    fn publish(&self, node: &mut Node, forget: u16) {
        if self.cfg.records == Records::OneBehind {
            Self::record(node);
        }
        node.forget |= forget;
        node.pending_listed = Self::listing(node);
        node.pending_epoch = node.view.epoch;
        node.record_pending = true;
        if self.cfg.records == Records::AtOnce {
            Self::record(node);
        }
    }

    /// The snapshot actor writes the pending record.
    fn record(node: &mut Node) {
        if !node.record_pending {
            return;
        }
        for r in 0..RANGES {
            if node.forget & (1 << r) != 0 {
                node.disk.checkpoint[r] = None;
            }
        }
        node.forget = 0;
        node.disk.listed = node.pending_listed;
        node.disk.listed_epoch = node.pending_epoch;
        node.record_pending = false;
    }

    /// Starts the work a state change asks for (`run`).
    fn run(node: &mut Node, r: usize, next: Next) {
        let epoch = node.view.epoch;
        // unwrap: only called for a range the node holds.
        let slot = node.slots[r].as_mut().unwrap();
        match next {
            Next::Nothing => {}
            Next::Checkpoint => slot.checkpoint = true,
            Next::Load => slot.loader = Some(epoch),
            Next::Handoff => slot.handoff = Some(epoch),
        }
    }

    /// An empty table, restored at once, that loads (`load_gained`).
    fn load_gained(node: &mut Node, r: usize) {
        // unwrap: only called for a range the node holds.
        let slot = node.slots[r].as_mut().unwrap();
        slot.full = StartFrom::DiskThenLoad.first_snapshot_full(false);
        let next = slot.range.restored(false);
        Self::run(node, r, next);
    }

    fn retire_drained(&self, node: &mut Node, me: usize) -> u16 {
        let stable = !node.view.scaling;
        let mut dropped = 0;
        for r in self.ranges() {
            let owned = self.owned(node.view, me, r);
            if node.slots[r].is_some_and(|s| protocol::retire(s.range.state, stable, owned)) {
                node.slots[r] = None;
                dropped |= 1 << r;
            }
        }
        dropped
    }

    /// The router's `AdoptView`.
    fn adopt(&self, node: &mut Node, me: usize, next: View) {
        let new = self.known(next);
        if !new.stored.supersedes(&self.known(node.view).stored) {
            return;
        }
        node.view = next;
        for r in self.ranges() {
            match protocol::on_adopt(node.slots[r].as_ref().map(|s| &s.range), new.roles[me][r]) {
                AdoptAction::Keep => {}
                AdoptAction::StartLoading => {
                    // unwrap: a gained range always has a starting state.
                    let mut slot = Slot::new(protocol::at_start(Role::Gained).unwrap(), None);
                    if let Some(ids) = node.ahead[r] {
                        slot.table = ids;
                        slot.dirty = ids;
                        node.loaded_ahead |= ids != 0;
                    }
                    node.slots[r] = Some(slot);
                    if node.wal_open {
                        Self::load_gained(node, r);
                    } else {
                        node.gained_early |= 1 << r;
                    }
                }
                action => {
                    if let Some(slot) = node.slots[r].as_mut() {
                        let next = slot.range.adopt(action);
                        Self::run(node, r, next);
                    }
                }
            }
        }
        // Tables loaded ahead serve the loads of this view or none.
        node.ahead = [None; RANGES];
        let dropped = self.retire_drained(node, me);
        self.publish(node, dropped);
    }

    /// A report reaches the router (`finish_move`).
    fn finish_move(&self, node: &mut Node, me: usize, r: usize, step: fn(&mut Range) -> Next) {
        let Some(slot) = node.slots[r].as_mut() else { return };
        let before = slot.range;
        let next = step(&mut slot.range);
        if slot.range == before {
            return;
        }
        Self::run(node, r, next);
        let dropped = self.retire_drained(node, me);
        self.publish(node, dropped);
    }

    /// A snapshot segment of a range (full, or its dirty ids) into the chain.
    fn take_snapshot(slot: &mut Slot, chain: &mut Ids) {
        if slot.full {
            *chain = slot.table;
        } else {
            *chain |= slot.dirty;
        }
        slot.full = false;
        slot.dirty = 0;
    }

    /// The snapshot actor starts its periodic work once every range the
    /// node started with is restored (`AllRestored`).
    fn all_restored(node: &Node) -> bool {
        node.wal_open && node.slots.iter().flatten().all(|s| s.start.is_none())
    }

    fn admits(node: &Node, r: usize, access: Access) -> bool {
        node.up && protocol::admit(node.slots[r].map(|s| s.range.state), access) == Admission::Serve
    }

    fn restart(&self, s: &mut State, k: usize) {
        let view = s.store_view;
        let roles = self.known(view).roles[k];
        let node = &mut s.nodes[k];
        node.up = true;
        node.view = view;
        let holds = protocol::listing_holds(u64::from(node.disk.listed_epoch), u64::from(view.epoch));
        for r in self.ranges() {
            let listed = holds && node.disk.listed & (1 << r) != 0;
            let start = protocol::start_from(roles[r], listed);
            node.slots[r] = protocol::at_start(roles[r]).map(|range| Slot::new(range, Some(start)));
        }
    }

    /// Everything in memory is gone; the disk stays.
    fn crash(s: &mut State, k: usize) {
        let node = &mut s.nodes[k];
        *node = Node {
            up: false,
            view: node.view,
            wal_open: false,
            slots: [None; RANGES],
            gained_early: 0,
            loaded_reports: 0,
            handoff_reports: 0,
            record_pending: false,
            pending_listed: 0,
            pending_epoch: 0,
            forget: 0,
            disk: node.disk,
            ahead: [None; RANGES],
            loaded_ahead: node.loaded_ahead,
        };
    }

    /// A node's disk is gone: the acknowledged ids only it held are lost,
    /// and no longer count against the protocol.
    fn lose_disk(&self, s: &mut State, k: usize) {
        for r in self.ranges() {
            let mut elsewhere = s.store[r].chain;
            for (j, node) in s.nodes.iter().enumerate() {
                if j != k {
                    elsewhere |= node.disk.has(r);
                }
            }
            let forgiven = s.acked[r] & !elsewhere;
            s.acked[r] &= !forgiven;
            s.claimed &= !forgiven;
        }
        s.nodes[k].disk = Disk::default();
    }

    /// The store's view is stable and every node is up, holds it, and
    /// serves exactly the ranges it owns.
    fn settled(&self, s: &State) -> bool {
        !s.store_view.scaling
            && s.nodes[..self.cfg.nodes].iter().enumerate().all(|(k, node)| {
                node.up
                    && node.view == s.store_view
                    && self.ranges().all(|r| {
                        let state = node.slots[r].map(|slot| slot.range.state);
                        if self.owned(s.store_view, k, r) {
                            state == Some(RangeState::Serving)
                        } else {
                            state.is_none()
                        }
                    })
            })
    }
}

impl Model for KeyDb {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let view = View { epoch: 1, scaling: false, nodes: self.cfg.initial_nodes, previous: 0 };
        let node = Node {
            up: false,
            view,
            wal_open: false,
            slots: [None; RANGES],
            gained_early: 0,
            loaded_reports: 0,
            handoff_reports: 0,
            record_pending: false,
            pending_listed: 0,
            pending_epoch: 0,
            forget: 0,
            disk: Disk::default(),
            ahead: [None; RANGES],
            loaded_ahead: false,
        };
        let mut s = State {
            store_view: view,
            store: [StoredRange::default(); RANGES],
            nodes: [node; NODES],
            acked: [0; RANGES],
            claimed: 0,
            claimed_twice: false,
            next_id: 0,
            crashes: 0,
            disk_losses: 0,
            scales: 0,
            completions: 0,
        };
        // Every node starts on an empty disk, and restores.
        for k in 0..self.cfg.nodes {
            self.restart(&mut s, k);
            s = self.next_state(&s, Action::RestoreLocal(k)).unwrap_or(s);
            for r in self.ranges() {
                if s.nodes[k].slots[r].is_some_and(|slot| slot.start.is_some()) {
                    s = self.next_state(&s, Action::RestoreFromStore(k, r)).unwrap_or(s);
                }
            }
        }
        vec![s]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (k, node) in s.nodes[..self.cfg.nodes].iter().enumerate() {
            if !node.up {
                actions.push(Action::Restart(k));
                continue;
            }
            if s.next_id < self.cfg.writes {
                for &r in &self.cfg.write_ranges {
                    actions.push(Action::Write(k, r));
                }
            }
            for r in self.ranges() {
                let slot = node.slots[r];
                if self.cfg.reclaims && slot.is_some() {
                    for id in 0..s.next_id {
                        if s.acked[r] & (1 << id) != 0 {
                            actions.push(Action::Reclaim(k, r, id));
                        }
                    }
                }
                if let Some(slot) = slot {
                    if slot.range.state == RangeState::Serving {
                        actions.push(Action::Snapshot(k, r));
                    }
                    if slot.checkpoint {
                        actions.push(Action::CheckpointRange(k, r));
                    }
                    if slot.start == Some(StartFrom::StoreAndDisk) && node.wal_open {
                        actions.push(Action::RestoreFromStore(k, r));
                    }
                    if slot.loader.is_some() {
                        actions.push(Action::LoadStep(k, r));
                    }
                    if slot.handoff.is_some() {
                        actions.push(Action::HandoffStep(k, r));
                    }
                }
                if node.loaded_reports & (1 << r) != 0 {
                    actions.push(Action::ReportLoaded(k, r));
                }
                if node.handoff_reports & (1 << r) != 0 {
                    actions.push(Action::ReportHandedOff(k, r));
                }
            }
            if Self::all_restored(node) {
                actions.push(Action::CheckpointAll(k));
            }
            if node.record_pending && self.cfg.records == Records::Late {
                actions.push(Action::RecordLocal(k));
            }
            if !node.wal_open {
                actions.push(Action::RestoreLocal(k));
            }
            // The ranges the next scale of the plan gives this node, as
            // `/prepareScale` computes them from the node's (stable) view.
            if let Some(&next) = self.cfg.scales.get(s.scales as usize).filter(|_| self.cfg.ahead) {
                if node.wal_open && !node.view.scaling {
                    let after = assignment::owners(self.cfg.ranges, u32::from(next));
                    for r in self.ranges() {
                        let fresh = node.ahead[r].is_none_or(|ids| s.store[r].chain & !ids != 0);
                        if after[r] == k as u32 && !self.owned(node.view, k, r) && fresh {
                            actions.push(Action::LoadAhead(k, r));
                        }
                    }
                }
            }
            actions.push(Action::Refresh(k));
            if (s.scales as usize) < self.cfg.scales.len() {
                actions.push(Action::Scale(k));
            }
            if s.store_view.scaling {
                actions.push(Action::ScaleComplete(k));
            }
            if s.crashes < self.cfg.crashes {
                actions.push(Action::Crash(k));
            }
            if s.disk_losses < self.cfg.disk_losses {
                actions.push(Action::CrashLosingDisk(k));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Write(k, r) => {
                if !Self::admits(&s.nodes[k], r, Access::Claim) {
                    return None;
                }
                let id: Ids = 1 << s.next_id;
                s.next_id += 1;
                let node = &mut s.nodes[k];
                // unwrap: admitted, so held.
                let slot = node.slots[r].as_mut().unwrap();
                slot.table |= id;
                slot.dirty |= id;
                node.disk.wal[r] |= id;
                s.acked[r] |= id;
                s.claimed |= id;
            }
            Action::Reclaim(k, r, id) => {
                if !Self::admits(&s.nodes[k], r, Access::Claim) {
                    return None;
                }
                let id: Ids = 1 << id;
                let node = &mut s.nodes[k];
                // unwrap: admitted, so held.
                let slot = node.slots[r].as_mut().unwrap();
                if slot.table & id != 0 {
                    return None; // "existed"
                }
                slot.table |= id;
                slot.dirty |= id;
                node.disk.wal[r] |= id;
                s.claimed_twice |= s.claimed & id != 0;
                s.claimed |= id;
            }
            Action::Snapshot(k, r) => {
                if !Self::all_restored(&s.nodes[k]) {
                    return None;
                }
                // unwrap: only offered for a held range.
                let slot = s.nodes[k].slots[r].as_mut().unwrap();
                if !slot.full && slot.dirty == 0 {
                    return None;
                }
                Self::take_snapshot(slot, &mut s.store[r].chain);
            }
            Action::CheckpointAll(k) => {
                let node = &mut s.nodes[k];
                Self::record(node);
                for r in self.ranges() {
                    if let Some(slot) = node.slots[r].filter(|s| s.range.state != RangeState::Restoring) {
                        node.disk.checkpoint[r] = Some(slot.table);
                    }
                    node.disk.wal[r] = 0;
                }
            }
            Action::CheckpointRange(k, r) => {
                let node = &mut s.nodes[k];
                Self::record(node);
                // unwrap: only offered for a held range.
                let slot = node.slots[r].as_mut().unwrap();
                slot.checkpoint = false;
                node.disk.checkpoint[r] = Some(slot.table);
                if !slot.range.on_disk {
                    slot.range.checkpointed();
                    self.publish(node, 0);
                }
            }
            Action::RecordLocal(k) => Self::record(&mut s.nodes[k]),
            Action::RestoreLocal(k) => {
                let node = &mut s.nodes[k];
                node.wal_open = true;
                for r in self.ranges() {
                    if node.gained_early & (1 << r) != 0 {
                        Self::load_gained(node, r);
                    }
                }
                node.gained_early = 0;
                for r in self.ranges() {
                    let has = node.disk.has(r);
                    let Some(slot) = node.slots[r].as_mut() else { continue };
                    let Some(from @ (StartFrom::Disk | StartFrom::DiskThenLoad)) = slot.start else {
                        continue;
                    };
                    slot.start = None;
                    slot.table = has;
                    slot.dirty = has;
                    slot.full = from.first_snapshot_full(has != 0);
                    let next = slot.range.restored(from.on_disk());
                    Self::run(node, r, next);
                }
                self.publish(node, 0);
            }
            Action::RestoreFromStore(k, r) => {
                let chain = s.store[r].chain;
                let node = &mut s.nodes[k];
                let has = node.disk.has(r);
                // unwrap: only offered for a held range.
                let slot = node.slots[r].as_mut().unwrap();
                let from = StartFrom::StoreAndDisk;
                slot.start = None;
                slot.table = has | chain;
                // Everything from the store alone is in the store already.
                slot.dirty = if has == 0 { 0 } else { slot.table };
                slot.full = from.first_snapshot_full(has != 0);
                let next = slot.range.restored(from.on_disk());
                Self::run(node, r, next);
                self.publish(node, 0);
            }
            Action::LoadStep(k, r) => {
                let stored = s.store[r];
                let node = &mut s.nodes[k];
                // unwrap: only offered for a held range with a loader.
                let slot = node.slots[r].as_mut().unwrap();
                let epoch = slot.loader.unwrap();
                let new = stored.chain & !slot.table;
                slot.table |= new;
                slot.dirty |= new;
                if stored.handoff >= epoch {
                    slot.loader = None;
                    s.store[r].loaded = epoch;
                    node.loaded_reports |= 1 << r;
                } else if new == 0 {
                    return None;
                }
            }
            Action::LoadAhead(k, r) => {
                let ahead = &mut s.nodes[k].ahead[r];
                *ahead = Some(ahead.unwrap_or(0) | s.store[r].chain);
            }
            Action::HandoffStep(k, r) => {
                let node = &mut s.nodes[k];
                // unwrap: only offered for a held range with a handoff.
                let slot = node.slots[r].as_mut().unwrap();
                let epoch = slot.handoff.take().unwrap();
                if s.store[r].handoff < epoch {
                    Self::take_snapshot(slot, &mut s.store[r].chain);
                    s.store[r].handoff = epoch;
                }
                node.handoff_reports |= 1 << r;
            }
            Action::ReportLoaded(k, r) => {
                let node = &mut s.nodes[k];
                node.loaded_reports &= !(1 << r);
                self.finish_move(node, k, r, Range::loaded);
            }
            Action::ReportHandedOff(k, r) => {
                let node = &mut s.nodes[k];
                node.handoff_reports &= !(1 << r);
                self.finish_move(node, k, r, Range::handed_off);
            }
            Action::Refresh(k) => {
                let view = s.store_view;
                self.adopt(&mut s.nodes[k], k, view);
            }
            Action::Scale(k) => {
                // `current_view`: the store's view, adopted first if newer.
                let current = s.store_view;
                self.adopt(&mut s.nodes[k], k, current);
                if !current.scaling {
                    let next = View {
                        epoch: current.epoch + 1,
                        scaling: true,
                        nodes: self.cfg.scales[s.scales as usize],
                        previous: current.nodes,
                    };
                    s.store_view = next;
                    s.scales += 1;
                    self.adopt(&mut s.nodes[k], k, next);
                }
            }
            Action::ScaleComplete(k) => {
                let current = s.store_view;
                self.adopt(&mut s.nodes[k], k, current);
                let stored = &self.known(current).stored;
                let mark = |e: u8| (e > 0).then_some(u64::from(e));
                let marks = stored.moved_ranges().into_iter().map(|r| Marks {
                    range: r,
                    handed_off: mark(s.store[r as usize].handoff),
                    loaded: mark(s.store[r as usize].loaded),
                });
                if current.scaling && protocol::may_complete(stored.epoch, marks).is_ok() {
                    let stable = View { scaling: false, previous: 0, ..current };
                    s.store_view = stable;
                    s.completions += 1;
                    self.adopt(&mut s.nodes[k], k, stable);
                }
            }
            Action::Crash(k) => {
                s.crashes += 1;
                Self::crash(&mut s, k);
            }
            Action::CrashLosingDisk(k) => {
                s.disk_losses += 1;
                Self::crash(&mut s, k);
                self.lose_disk(&mut s, k);
            }
            Action::Restart(k) => self.restart(&mut s, k),
        }
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(
                "a range that serves reads holds every acknowledged id",
                |m: &KeyDb, s: &State| {
                    s.nodes.iter().all(|node| {
                        m.ranges().all(|r| {
                            !KeyDb::admits(node, r, Access::Get)
                                || s.acked[r] & !node.slots[r].map_or(0, |slot| slot.table) == 0
                        })
                    })
                },
            ),
            Property::always("at most one node takes writes for a range", |m: &KeyDb, s: &State| {
                m.ranges()
                    .all(|r| s.nodes.iter().filter(|node| KeyDb::admits(node, r, Access::Put)).count() <= 1)
            }),
            Property::always("no claim answers new twice", |_, s: &State| !s.claimed_twice),
            Property::always("every range held passes check_range", |m: &KeyDb, s: &State| {
                s.nodes.iter().enumerate().all(|(k, node)| {
                    m.ranges().all(|r| {
                        node.slots[r].is_none_or(|slot| {
                            protocol::check_range(&slot.range, m.owned(node.view, k, r), !node.view.scaling)
                                .is_ok()
                        })
                    })
                })
            }),
            // Faults, clients and scales are finite and every step moves
            // forward, so every run ends in a state where nothing more can
            // happen: there, the scales must be complete and every range
            // served by its owner alone.
            Property::always("every run ends settled", |m: &KeyDb, s: &State| {
                (s.completions as usize == m.cfg.scales.len() && m.settled(s)) || !m.next_states(s).is_empty()
            }),
            Property::sometimes("every scale completes", |m: &KeyDb, s: &State| {
                s.completions as usize == m.cfg.scales.len()
            }),
        ];
        if self.cfg.ahead {
            properties.push(Property::sometimes("a load starts from ids loaded ahead", |_, s: &State| {
                s.nodes.iter().any(|n| n.loaded_ahead)
            }));
        }
        properties
    }
}

/// Checks every state of `cfg`, printing the count and time, and fails with
/// the shortest path to each property violated.
fn check(name: &str, cfg: Config) {
    let started = Instant::now();
    // Breadth first, stopping at the first violation: its path is the
    // shortest (exactly so with one thread).
    let threads = std::env::var("KEYDB_MODEL_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    let checker = KeyDb::new(cfg.clone())
        .checker()
        .threads(threads)
        .finish_when(HasDiscoveries::AnyFailures)
        .spawn_bfs()
        .join();
    println!(
        "{name}: {} states ({} unique, depth {}) in {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for p in checker.model().properties() {
        match (p.expectation, checker.discovery(p.name)) {
            (Expectation::Sometimes, None) => failed.push(format!("never: {}", p.name)),
            (Expectation::Sometimes, Some(_)) | (_, None) => {}
            (_, Some(path)) => {
                failed.push(format!("violated: {}\n{path}last state: {:#?}", p.name, path.last_state()))
            }
        }
    }
    assert!(checker.is_done(), "{name}: not every state was checked");
    assert!(failed.is_empty(), "{name} ({cfg:?}):\n{}", failed.join("\n"));
}

/// Takes the steps of `path` that are possible (some no longer are once a
/// scenario is fixed), from the initial state.
fn walk(model: &KeyDb, path: &[Action], mut each: impl FnMut(usize, Action, &State)) -> State {
    let mut state = model.init_states().remove(0);
    let mut actions = Vec::new();
    for (i, &action) in path.iter().enumerate() {
        actions.clear();
        model.actions(&state, &mut actions);
        if let Some(next) = actions.contains(&action).then(|| model.next_state(&state, action)).flatten() {
            state = next;
        }
        each(i, action, &state);
    }
    state
}

/// Walks `path` checking the safety properties at every state: a scenario
/// the model once found.
fn replay(cfg: Config, path: &[Action]) {
    let model = KeyDb::new(cfg);
    let safety: Vec<_> = model
        .properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Always && p.name != "every run ends settled")
        .collect();
    walk(&model, path, |i, action, state| {
        for p in &safety {
            assert!((p.condition)(&model, state), "{} after step {i} ({action:?}): {state:#?}", p.name);
        }
    });
}

/// Two nodes, two ranges: range 1 moves to node 1 and back.
fn grow_then_shrink() -> Config {
    Config {
        nodes: 2,
        ranges: 2,
        initial_nodes: 1,
        scales: vec![2, 1],
        writes: 2,
        write_ranges: vec![1],
        reclaims: true,
        crashes: 1,
        disk_losses: 0,
        records: Records::AtOnce,
        ahead: false,
    }
}

#[test]
fn two_nodes_grow_then_shrink() {
    check("2 nodes, 2 ranges, 1->2->1, 2 writes, 1 crash", grow_then_shrink());
}

#[test]
fn two_nodes_loading_ahead() {
    let cfg = Config { ahead: true, ..grow_then_shrink() };
    check("2 nodes, 2 ranges, 1->2->1, 2 writes, 1 crash, ranges loaded ahead", cfg);
}

#[test]
fn two_nodes_with_local_records_one_behind() {
    let cfg = Config { writes: 1, records: Records::OneBehind, ..grow_then_shrink() };
    check("2 nodes, 2 ranges, 1->2->1, 1 write, 1 crash, local.json one record behind", cfg);
}

#[test]
fn two_nodes_losing_a_disk() {
    let cfg = Config { crashes: 0, disk_losses: 1, ..grow_then_shrink() };
    check("2 nodes, 2 ranges, 1->2->1, 2 writes, 1 crash losing the disk", cfg);
}

#[test]
fn three_nodes_grow() {
    let cfg = Config {
        nodes: 3,
        ranges: 3,
        initial_nodes: 2,
        scales: vec![3],
        writes: 1,
        write_ranges: vec![1],
        ..grow_then_shrink()
    };
    check("3 nodes, 3 ranges, 2->3, 1 write, 1 crash", cfg);
}

/// By hand, with `KEYDB_MODEL_LARGE=1`: 14.0 M and 12.9 M states, about
/// 11 minutes each on two busy cores.
#[test]
fn larger_configurations() {
    if std::env::var("KEYDB_MODEL_LARGE").is_err() {
        println!("skipped: set KEYDB_MODEL_LARGE=1 to check the larger configurations");
        return;
    }
    let cfg = Config { records: Records::Late, ..grow_then_shrink() };
    check("2 nodes, 2 ranges, 1->2->1, 2 writes, 1 crash, local.json records late or lost", cfg);
    let cfg = Config {
        nodes: 3,
        ranges: 3,
        initial_nodes: 2,
        scales: vec![3, 2],
        writes: 1,
        write_ranges: vec![1],
        disk_losses: 1,
        ..grow_then_shrink()
    };
    check("3 nodes, 3 ranges, 2->3->2, 1 write, 1 crash, 1 crash losing the disk", cfg);
}

use Action::*;

/// A node restarted mid-scale (range 1 gained, its disk part restored
/// first) loses the range to the next scale before loading it: it handed
/// off that part as a full segment, wiping id 0 from the chain.
#[test]
fn replay_handoff_of_a_partial_restore() {
    replay(
        grow_then_shrink(),
        &[
            Write(0, 1),
            Scale(0),
            HandoffStep(0, 1),
            ReportHandedOff(0, 1),
            Refresh(1),
            LoadStep(1, 1),
            Crash(1),
            Restart(1),
            ScaleComplete(0),
            Scale(0),
            Refresh(1),
            RestoreLocal(1),
            HandoffStep(1, 1),
            LoadStep(0, 1),
            ReportLoaded(0, 1),
            Reclaim(0, 1, 0),
        ],
    );
}

/// A node restarted mid-scale (range 1 lost, restoring) gains it back in
/// the next scale before it is restored: it handed off for the epoch in
/// which it gains the range, loaded its own handoff mark after another
/// restart, and served beside node 1.
#[test]
fn replay_handoff_by_the_node_gaining_the_range() {
    replay(
        Config { crashes: 2, ..grow_then_shrink() },
        &[
            CheckpointRange(0, 1),
            Scale(0),
            HandoffStep(0, 1),
            Crash(0),
            Restart(0),
            Refresh(1),
            LoadStep(1, 1),
            ScaleComplete(0),
            Scale(0),
            RestoreLocal(0),
            HandoffStep(0, 1),
            Crash(0),
            Restart(0),
            RestoreLocal(0),
            LoadStep(0, 1),
            ReportLoaded(0, 1),
            ReportLoaded(1, 1),
            Write(1, 1),
        ],
    );
}

/// `scaleComplete` and the next `/scale` both at node 1 before node 0
/// re-read the view: node 0 kept range 1 drained though it owned it again
/// (421 for it, no load, `scaleComplete` refused for good).
#[test]
fn replay_range_gained_back_while_drained() {
    let model = KeyDb::new(grow_then_shrink());
    let path = [
        Scale(0),
        HandoffStep(0, 1),
        ReportHandedOff(0, 1),
        Refresh(1),
        LoadStep(1, 1),
        ReportLoaded(1, 1),
        ScaleComplete(1),
        Scale(1),
        Refresh(0),
        HandoffStep(1, 1),
        ReportHandedOff(1, 1),
    ];
    let state = walk(&model, &path, |_, _, _| {});
    assert_eq!(state.nodes[0].slots[1].map(|s| s.range.state), Some(RangeState::Loading));
    let state = walk(
        &model,
        &[&path[..], &[LoadStep(0, 1), ReportLoaded(0, 1), ScaleComplete(0), Refresh(1)]].concat(),
        |_, _, _| {},
    );
    assert!(model.settled(&state), "{state:#?}");
}

/// Node 1 adopts the next scale while its load report is on its way: it
/// went on to serve range 1, no longer its own, and never handed it off.
#[test]
fn replay_range_lost_while_loading() {
    let model = KeyDb::new(grow_then_shrink());
    let path = [
        Scale(0),
        HandoffStep(0, 1),
        Refresh(1),
        LoadStep(1, 1),
        ScaleComplete(1),
        Scale(1),
        ReportLoaded(1, 1),
        HandoffStep(1, 1),
        ReportHandedOff(1, 1),
    ];
    let state = walk(&model, &path, |_, _, _| {});
    assert_eq!(state.nodes[1].slots[1].map(|s| s.range.state), Some(RangeState::Drained), "{state:#?}");
    assert_eq!(state.store[1].handoff, 3);
}

/// A `local.json` record lost before a crash: node 0 restarted trusting a
/// listing of range 1 made before it drained it and loaded it back, and
/// served without the id node 1 took meanwhile.
#[test]
fn replay_stale_local_listing() {
    replay(
        Config { writes: 1, records: Records::OneBehind, ..grow_then_shrink() },
        &[
            CheckpointRange(0, 1),
            Scale(0),
            HandoffStep(0, 1),
            Refresh(1),
            LoadStep(1, 1),
            ScaleComplete(0),
            Scale(0),
            ReportLoaded(1, 1),
            Write(1, 1),
            Refresh(1),
            HandoffStep(1, 1),
            LoadStep(0, 1),
            Crash(0),
            ScaleComplete(1),
            Restart(0),
            RestoreLocal(0),
        ],
    );
}
