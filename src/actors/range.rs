//! `RangeActor` owns one range's keys (a [`RangeTable`]) and sweeps them.
//!
//! Per-key atomicity of claims comes from the actor handling one batch at a
//! time. It never does I/O and never blocks: a batch costs microseconds, and
//! the sweep visits a bounded number of slots per tick.

use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler};

use crate::clock;
use crate::messages::{RangeBatch, RangeOp, RangeStats, RangeStatsReply};
use crate::table::RangeTable;

/// How often the sweep runs, and how much of the table it visits each time.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_MIN_SLOTS: usize = 4096;
/// A full pass over the table takes at most this many ticks.
const SWEEP_PASS_TICKS: usize = 60;

/// Bounded so that overload shows up as waiting senders, not unbounded memory.
const MAILBOX_CAPACITY: usize = 1024;

pub struct RangeActor {
    range: u32,
    table: RangeTable,
}

impl RangeActor {
    pub fn new(range: u32) -> Self {
        RangeActor { range, table: RangeTable::new() }
    }

    fn sweep(&mut self) {
        let budget = (self.table.slot_count() / SWEEP_PASS_TICKS).max(SWEEP_MIN_SLOTS);
        let removed = self.table.sweep(clock::now_secs(), budget);
        if removed > 0 {
            log::trace!("range {}: swept {removed} expired keys", self.range);
        }
    }
}

impl Actor for RangeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(SWEEP_EVERY, |actor, _| actor.sweep());
    }
}

impl Handler<RangeBatch> for RangeActor {
    type Result = Vec<bool>;

    fn handle(&mut self, batch: RangeBatch, _: &mut Context<Self>) -> Vec<bool> {
        let RangeBatch { op, now, keys } = batch;
        match op {
            RangeOp::Get => keys.iter().map(|&k| self.table.contains(k, now)).collect(),
            RangeOp::Put { expiry } => {
                for &k in &keys {
                    self.table.merge(k, expiry, now);
                }
                Vec::new()
            }
            RangeOp::Claim { expiry } => keys.iter().map(|&k| self.table.claim(k, expiry, now)).collect(),
        }
    }
}

impl Handler<RangeStats> for RangeActor {
    type Result = RangeStatsReply;

    fn handle(&mut self, _: RangeStats, _: &mut Context<Self>) -> RangeStatsReply {
        RangeStatsReply { keys: self.table.len() as u64, heap_bytes: self.table.heap_bytes() as u64 }
    }
}
