//! The fan-in of one request: its keys grouped by range, each range's share
//! ([`Share`]) answered by that range's actor, and one waiter woken when
//! the last share is in.
//!
//! Plain synchronous code: it knows nothing of actors, so it is tested with
//! unit tests. A share dropped unanswered (its actor is gone) fails the
//! request instead of leaving it waiting; the first failure wins.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::fingerprint::TableKey;

#[derive(Debug, Clone, thiserror::Error)]
#[error("range {0} is not restored yet")]
pub struct RangeUnavailable(pub u32);

/// Why a request's batch failed as a whole.
#[derive(Debug, Clone)]
pub enum GatherError {
    /// A range is not restored: retry later.
    Unavailable(RangeUnavailable),
    /// A range actor is gone (a bug, or the node is stopping).
    Dropped(u32),
}

/// A request's answers in request order (empty for puts), and the WAL
/// sequence number it may be acknowledged at: the highest any of its
/// ranges returned, covering their writes and every earlier write of those
/// ranges that the answers may depend on.
#[derive(Debug)]
pub struct Gathered {
    pub answers: Vec<bool>,
    pub wal_seq: u64,
}

type Done = oneshot::Sender<Result<Gathered, GatherError>>;

/// One request's keys grouped by range, and the answers as the ranges give
/// them. Built by the router; each range's slice is its own.
pub struct Gather {
    /// The request's keys, grouped by range.
    keys: Vec<TableKey>,
    /// For each entry of `keys`, its position in the request.
    positions: Vec<u32>,
    state: Mutex<GatherState>,
}

struct GatherState {
    answers: Vec<bool>,
    wal_seq: u64,
    /// Ranges that have not answered yet.
    remaining: usize,
    failure: Option<GatherError>,
    done: Option<Done>,
}

impl Gather {
    /// A gather over `keys` (grouped by range; `positions` gives each one's
    /// place in the request) that `ranges` batches will answer. `answered`:
    /// gets and claims answer one boolean per key, puts none.
    pub fn new(
        keys: Vec<TableKey>,
        positions: Vec<u32>,
        ranges: usize,
        answered: bool,
    ) -> (Arc<Gather>, oneshot::Receiver<Result<Gathered, GatherError>>) {
        debug_assert_eq!(keys.len(), positions.len());
        let (tx, rx) = oneshot::channel();
        let answers = if answered { vec![false; keys.len()] } else { Vec::new() };
        let mut state = GatherState { answers, wal_seq: 0, remaining: ranges, failure: None, done: Some(tx) };
        if ranges == 0 {
            state.finish();
        }
        (Arc::new(Gather { keys, positions, state: Mutex::new(state) }), rx)
    }

    /// The batch of the range whose keys are `keys[start..end]`.
    pub fn share(self: &Arc<Self>, range: u32, start: usize, end: usize) -> Share {
        Share { gather: self.clone(), range, start, end, answered: false }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GatherState> {
        // A panic while holding this lock could only leave this request's
        // answers half written, and the request then fails on its own.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GatherState {
    /// Called once every range has answered or failed.
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let result = match self.failure.take() {
                Some(e) => Err(e),
                None => Ok(Gathered { answers: std::mem::take(&mut self.answers), wal_seq: self.wal_seq }),
            };
            // The waiter may be gone (the client hung up): nothing to do.
            let _ = done.send(result);
        }
    }

    fn one_done(&mut self) {
        self.remaining -= 1;
        if self.remaining == 0 {
            self.finish();
        }
    }
}

/// One range's share of a [`Gather`]: its keys, and where its answers go.
/// Dropped without an answer, it fails the request.
pub struct Share {
    gather: Arc<Gather>,
    range: u32,
    start: usize,
    end: usize,
    answered: bool,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share(range {}, {} keys)", self.range, self.end - self.start)
    }
}

impl Share {
    /// This range's keys, in request order.
    pub fn keys(&self) -> &[TableKey] {
        &self.gather.keys[self.start..self.end]
    }

    /// Answers this range's share: `answers` (one per key for gets and
    /// claims, empty for puts) and the WAL sequence number they depend on.
    pub fn answer(mut self, answers: &[bool], wal_seq: u64) {
        self.answered = true;
        let positions = &self.gather.positions[self.start..self.end];
        let mut state = self.gather.lock();
        if !answers.is_empty() {
            debug_assert_eq!(answers.len(), positions.len());
            for (&p, &b) in positions.iter().zip(answers) {
                state.answers[p as usize] = b;
            }
        }
        state.wal_seq = state.wal_seq.max(wal_seq);
        state.one_done();
    }

    /// Refuses this range's share, and with it the request.
    pub fn refuse(mut self, why: RangeUnavailable) {
        self.answered = true;
        self.fail(GatherError::Unavailable(why));
    }

    fn fail(&self, e: GatherError) {
        let mut state = self.gather.lock();
        state.failure.get_or_insert(e);
        state.one_done();
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if !self.answered {
            self.fail(GatherError::Dropped(self.range));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> Vec<TableKey> {
        (0..n).map(|lo| TableKey { lo, hi: 0 }).collect()
    }

    /// Gets over four keys in two ranges: request order 0..4, grouped as
    /// range A = request positions [2, 0], range B = [3, 1].
    fn two_ranges() -> (Arc<Gather>, oneshot::Receiver<Result<Gathered, GatherError>>) {
        Gather::new(keys(4), vec![2, 0, 3, 1], 2, true)
    }

    fn result(
        mut rx: oneshot::Receiver<Result<Gathered, GatherError>>,
    ) -> Option<Result<Gathered, GatherError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn answers_land_in_request_order_with_the_highest_sequence_number() {
        let (g, mut rx) = two_ranges();
        let (a, b) = (g.share(7, 0, 2), g.share(9, 2, 4));
        assert_eq!(a.keys(), &keys(4)[0..2]);
        b.answer(&[true, false], 12);
        assert!(rx.try_recv().is_err(), "one range is still out");
        a.answer(&[false, true], 5);
        let done = result(rx).expect("done once both answered").unwrap();
        assert_eq!(done.answers, vec![true, false, false, true]);
        assert_eq!(done.wal_seq, 12);
    }

    #[test]
    fn puts_have_no_answers_and_no_ranges_finish_at_once() {
        let (g, rx) = Gather::new(keys(2), vec![0, 1], 1, false);
        g.share(0, 0, 2).answer(&[], 3);
        let done = result(rx).unwrap().unwrap();
        assert!(done.answers.is_empty());
        assert_eq!(done.wal_seq, 3);
        let (_, rx) = Gather::new(Vec::new(), Vec::new(), 0, true);
        assert_eq!(result(rx).unwrap().unwrap().answers, Vec::<bool>::new());
    }

    #[test]
    fn a_refused_range_fails_the_request_after_every_share_is_in() {
        let (g, mut rx) = two_ranges();
        let (a, b) = (g.share(7, 0, 2), g.share(9, 2, 4));
        a.refuse(RangeUnavailable(7));
        assert!(rx.try_recv().is_err(), "waits for the other share, which may have written");
        b.answer(&[true, true], 4);
        assert!(matches!(result(rx), Some(Err(GatherError::Unavailable(RangeUnavailable(7))))));
    }

    #[test]
    fn a_dropped_share_fails_the_request() {
        let (g, rx) = two_ranges();
        let (a, b) = (g.share(7, 0, 2), g.share(9, 2, 4));
        a.answer(&[true, true], 1);
        drop(b);
        assert!(matches!(result(rx), Some(Err(GatherError::Dropped(9)))));
    }

    #[test]
    fn the_first_failure_wins() {
        let (g, rx) = two_ranges();
        let (a, b) = (g.share(7, 0, 2), g.share(9, 2, 4));
        drop(b);
        a.refuse(RangeUnavailable(7));
        assert!(matches!(result(rx), Some(Err(GatherError::Dropped(9)))));
    }

    #[test]
    fn a_waiter_that_hung_up_is_no_harm() {
        let (g, rx) = two_ranges();
        drop(rx);
        g.share(7, 0, 2).answer(&[true, true], 1);
        g.share(9, 2, 4).answer(&[true, true], 1);
    }
}
