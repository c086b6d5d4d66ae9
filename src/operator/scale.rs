//! Scaling a cluster online: snapshot every range ahead of the move, have
//! the new owners load the moving ranges ahead (twice: the chains, then
//! what a second snapshot added), switch every node to the new view, wait
//! until every moved range is handed off and loaded, then complete the
//! scale on every node.
//!
//! Before anything changes, and again before the switch, every node of the
//! new list must answer as the node of its index in this cluster: a switch
//! to a list with a missing or misplaced node leaves ranges refused towards
//! an address no node of the cluster serves.
//!
//! Every step is idempotent, so a failed or interrupted scale is resumed by
//! running it again with the same target (see [`Resume`]); once switched,
//! the nodes show the lists before and after, and the scale resumes at the
//! switch. A step that fails for a reason that may pass (a node restarting,
//! ranges still moving) is retried until the scale's deadline.

use std::time::{Duration, Instant, SystemTime};

use super::OperatorError;
use crate::assignment;
use crate::backoff::Backoff;
use crate::client::{bare, Client, ClientError};
use crate::view::ClusterState;

/// Between two attempts of a step that failed for a reason that may pass.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Between two surveys of the nodes while ranges move.
const POLL: Duration = Duration::from_millis(250);

/// The address list a scale goes to, as the operator gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The complete new list (the current nodes first, in order).
    To(Vec<String>),
    /// Nodes to append; those already in the list (a scale adding them
    /// was started before) are not added twice, so the same command resumes.
    Add(Vec<String>),
    /// How many nodes to remove from the end.
    Remove(u32),
}

impl Target {
    /// The new address list, from the current one.
    pub fn next(&self, old: &[String]) -> Result<Vec<String>, OperatorError> {
        let bare = |list: &[String]| -> Vec<String> { list.iter().map(|a| bare(a).to_string()).collect() };
        let next = match self {
            Target::To(to) => bare(to),
            Target::Add(add) => {
                let add = bare(add);
                old.iter().chain(add.iter().filter(|a| !old.contains(a))).cloned().collect()
            }
            Target::Remove(n) if (*n as usize) < old.len() => old[..old.len() - *n as usize].to_vec(),
            Target::Remove(n) => {
                return Err(OperatorError::Invalid(format!(
                    "--remove {n}: the cluster has {} nodes",
                    old.len()
                )))
            }
        };
        if !crate::settings::valid_address_list(&next) {
            return Err(OperatorError::Invalid("the new list must be distinct host:port addresses".into()));
        }
        if !(next.starts_with(old) || old.starts_with(&next)) {
            return Err(OperatorError::Invalid(format!(
                "the new list must keep the current nodes first, in order: {}",
                old.join(",")
            )));
        }
        Ok(next)
    }
}

/// The command that resumes a scale: the same scale again, with the full
/// new list.
#[derive(Debug, Clone)]
pub struct Resume {
    /// A node of the current list.
    pub address: String,
    pub to: Vec<String>,
}

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "keydb-admin --addresses {} scale --to {}", self.address, self.to.join(","))
    }
}

/// Where the ranges stand while they move, from one survey of the nodes.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Ranges that move in this scale.
    pub moved: usize,
    /// Of those, loaded by their new owner.
    pub loaded: usize,
    /// Of those, handed off by their old owner.
    pub handed_off: usize,
    /// Nodes still on an earlier epoch ("address on epoch N").
    pub behind: Vec<String>,
    pub unreachable: Vec<String>,
    /// Keys held by the nodes that answered.
    pub keys: u64,
    /// Since the scale started.
    pub elapsed: Duration,
}

impl Progress {
    /// The progress alone, without the clock or the key count: it changes
    /// only when ranges move on or nodes come and go.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "loaded {}/{moved}, handed off {}/{moved}",
            self.loaded,
            self.handed_off,
            moved = self.moved
        );
        if !self.behind.is_empty() {
            s.push_str(&format!(", behind: {}", self.behind.join(", ")));
        }
        if !self.unreachable.is_empty() {
            s.push_str(&format!(", unreachable: {}", self.unreachable.join(",")));
        }
        s
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "      {}, {} keys, {:.1}s", self.summary(), self.keys, self.elapsed.as_secs_f64())
    }
}

/// What a scale is doing, for the caller to show. `Display` gives the
/// line `keydb-admin` prints.
#[derive(Debug)]
pub enum Event<'a> {
    /// Before anything changes.
    Planned { from: usize, to: usize, moved: usize, total_hash_ranges: u32 },
    /// The new list is checked: every node answers as the node of its index.
    Checking { nodes: usize },
    /// A scale in progress (its switch made) is resumed at step 3.
    Resuming { epoch: u64 },
    /// Step 1 starts.
    Snapshotting,
    /// Step 2 starts.
    LoadingAhead,
    /// Step 2: a node loaded `ranges` ranges (`entries` entries) ahead, of
    /// `what` (the chains, or what was written meanwhile).
    LoadedAhead { what: &'static str, node: u32, ranges: u64, entries: u64 },
    /// Step 2 could not load ahead (a node is down, or older): the ranges
    /// load whole after the switch.
    NotLoadedAhead(&'a ClientError),
    /// Step 3 starts.
    Switching,
    /// Step 4 starts: the new view has `epoch`.
    Waiting { moved: usize, epoch: u64 },
    /// One survey of step 4.
    Progress(&'a Progress),
    /// Step 5 starts.
    Completing,
    /// A step failed for a reason that may pass; it runs again.
    Retrying(&'a ClientError),
}

impl std::fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Planned { from, to, moved, total_hash_ranges } => {
                write!(f, "scaling {from} -> {to} nodes: {moved} of {total_hash_ranges} ranges move")
            }
            Event::Checking { nodes } => {
                write!(f, "      checking that the {nodes} nodes of the new list answer, each as its index")
            }
            Event::Resuming { epoch } => write!(
                f,
                "resuming the scale in progress (epoch {epoch}): switched already, so steps 1 and 2 are skipped"
            ),
            Event::Snapshotting => f.write_str("[1/5] snapshotting every range ahead of the move"),
            Event::LoadingAhead => f.write_str("[2/5] loading the moving ranges ahead on their new owners"),
            Event::LoadedAhead { what, node, ranges, entries } => {
                write!(f, "      {what}: node {node}, {ranges} ranges, {entries} entries")
            }
            Event::NotLoadedAhead(e) => {
                write!(f, "      not loaded ahead ({e}); the ranges load whole after the switch")
            }
            Event::Switching => f.write_str("[3/5] switching to the new view"),
            Event::Waiting { moved, epoch } => {
                write!(f, "[4/5] waiting for {moved} ranges to be handed off and loaded (epoch {epoch})")
            }
            Event::Progress(p) => write!(f, "{p}"),
            Event::Completing => f.write_str("[5/5] completing"),
            Event::Retrying(e) => write!(f, "      retrying: {e}"),
        }
    }
}

/// What a finished scale did.
#[derive(Debug, Clone)]
pub struct Report {
    pub epoch: u64,
    /// Nodes before and after.
    pub from: usize,
    pub to: usize,
    pub ranges_moved: usize,
    /// Whether this run resumed a scale in progress (steps 3 to 5 only).
    pub resumed: bool,
    /// When the scale started, to line its steps up with other records.
    pub started_at: SystemTime,
    /// Step 1.
    pub snapshot: Duration,
    /// Step 2: loading ahead.
    pub prepare: Duration,
    /// Steps 3 and 4: switching, handing off and loading.
    pub handoff: Duration,
    /// Of those, step 3 alone.
    pub switch: Duration,
    /// Everything.
    pub total: Duration,
}

/// One scale, planned against the cluster as it is now; run it whole with
/// [`Scale::run`] or step by step.
pub struct Scale<'a> {
    client: &'a Client,
    /// The list before.
    pub old: Vec<String>,
    /// The list after.
    pub next: Vec<String>,
    /// Ranges that move.
    pub moved: usize,
    /// The cluster's id, which every node of the new list must show.
    cluster_id: String,
    /// The epoch of the scale in progress this one resumes.
    resuming: Option<u64>,
    timeout: Duration,
    started: Instant,
    started_at: SystemTime,
    deadline: Instant,
    events: Box<dyn FnMut(Event<'_>) + 'a>,
}

impl<'a> Scale<'a> {
    /// Reads the current view from the cluster and plans the scale to
    /// `target`; the steps give up `timeout` from now. Changes nothing.
    ///
    /// If the cluster is scaling already, this is that scale resumed when
    /// `target` asks for the list it goes to (from the list before it, as
    /// the nodes show both), and an error naming the command that resumes
    /// it otherwise.
    pub async fn plan(
        client: &'a Client,
        target: &Target,
        timeout: Duration,
    ) -> Result<Scale<'a>, OperatorError> {
        let info = client.get_node_info(0).await?;
        let (old, next, resuming) = match (info.state, info.previous_addresses.clone()) {
            (ClusterState::Scaling, Some(before)) => {
                let asked = target.next(&before)?;
                if asked != info.addresses {
                    return Err(OperatorError::ScalingElsewhere {
                        epoch: info.epoch,
                        from: before.len(),
                        resume: Box::new(Resume { address: before[0].clone(), to: info.addresses }),
                    });
                }
                (before, asked, true)
            }
            // A node too old to show the list before: as the list is now.
            _ => {
                let next = target.next(&info.addresses)?;
                (info.addresses, next, false)
            }
        };
        let total = client.config().total_hash_ranges;
        let moved = assignment::moves(total, old.len() as u32, next.len() as u32).len();
        let started = Instant::now();
        Ok(Scale {
            client,
            old,
            next,
            moved,
            cluster_id: info.cluster_id,
            resuming: resuming.then_some(info.epoch),
            timeout,
            started,
            started_at: SystemTime::now(),
            deadline: started + timeout,
            events: Box::new(|_| {}),
        })
    }

    /// The epoch of the scale in progress that this one resumes (its switch
    /// was made: nothing is snapshotted or loaded ahead again).
    pub fn resuming(&self) -> Option<u64> {
        self.resuming
    }

    /// Tells `events` what the scale does from now on.
    pub fn on_event(mut self, events: impl FnMut(Event<'_>) + 'a) -> Scale<'a> {
        self.events = Box::new(events);
        self
    }

    /// The command that resumes this scale.
    pub fn resume(&self) -> Resume {
        Resume { address: self.old[0].clone(), to: self.next.clone() }
    }

    /// Every node concerned: the current ones, then the added ones.
    pub fn everyone(&self) -> Vec<String> {
        let mut everyone = self.old.clone();
        everyone.extend(self.next.iter().filter(|a| !self.old.contains(a)).cloned());
        everyone
    }

    /// All five steps; a resumed scale starts at the switch (step 3).
    pub async fn run(mut self) -> Result<Report, OperatorError> {
        (self.events)(Event::Planned {
            from: self.old.len(),
            to: self.next.len(),
            moved: self.moved,
            total_hash_ranges: self.client.config().total_hash_ranges,
        });
        if let Some(epoch) = self.resuming {
            (self.events)(Event::Resuming { epoch });
        } else {
            // Early, before anything is snapshotted; again before the switch.
            self.check_new_list().await?;
            self.snapshot().await?;
        }
        let snapshot = self.started.elapsed();
        if self.resuming.is_none() {
            self.load_ahead().await?;
        }
        let prepared = self.started.elapsed();
        let epoch = self.switch().await?;
        let switched = self.started.elapsed();
        self.wait_for_handoffs(epoch).await?;
        let moved_at = self.started.elapsed();
        self.complete().await?;
        Ok(Report {
            epoch,
            from: self.old.len(),
            to: self.next.len(),
            ranges_moved: self.moved,
            resumed: self.resuming.is_some(),
            started_at: self.started_at,
            snapshot,
            prepare: prepared - snapshot,
            handoff: moved_at - prepared,
            switch: switched - prepared,
            total: self.started.elapsed(),
        })
    }

    /// Whether every node of the new list is there to take its ranges: it
    /// answers `/info` at its address, as the node of its index in the
    /// list, in this cluster (same id, same number of hash ranges). A
    /// switch to a list that fails this leaves ranges refused (421) towards
    /// an address no node of the cluster serves, until the scale is
    /// completed by a node that does: so nothing is switched.
    ///
    /// The node checks only what it can alone (the list's shape, two
    /// addresses that resolve to the same socket): it has no token or
    /// client certificate for its peers, and the operator's view of the
    /// addresses (the one clients will use) is what must hold.
    pub async fn check_new_list(&mut self) -> Result<(), OperatorError> {
        (self.events)(Event::Checking { nodes: self.next.len() });
        let total = self.client.config().total_hash_ranges;
        let mut problems = Vec::new();
        for (index, address) in self.next.iter().enumerate() {
            let problem = match self.client.get_info_at(address).await {
                Err(ClientError::Unavailable { reason, .. }) => format!("does not answer ({reason})"),
                Err(e) => format!("does not answer ({e})"),
                Ok(i) if i.node_id as usize != index => {
                    let is = match self.next.get(i.node_id as usize).or(self.old.get(i.node_id as usize)) {
                        Some(a) => format!(" (the node at {a})"),
                        None => String::new(),
                    };
                    format!("answers as node {}{is}, not {index}", i.node_id)
                }
                Ok(i) if i.total_hash_ranges != total || i.cluster_id != self.cluster_id => format!(
                    "is a node of another cluster (id {:?} with {} hash ranges, not {:?} with {total})",
                    i.cluster_id, i.total_hash_ranges, self.cluster_id
                ),
                Ok(_) => continue,
            };
            problems.push(format!("{address} (node {index} of the new list) {problem}"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(OperatorError::NewListNotReady(problems.join("; ")))
    }

    /// Step 1: snapshots every range, so that the new owners load little
    /// from the handoff.
    pub async fn snapshot(&mut self) -> Result<(), OperatorError> {
        (self.events)(Event::Snapshotting);
        let client = self.client;
        self.retrying(1, "createSnapshots", false, || client.create_snapshots(false)).await.map(|_| ())
    }

    /// Step 2: the new owners load the moving ranges' chains ahead
    /// (`/prepareScale`), then a second snapshot takes what was written
    /// meanwhile and they load that too, which leaves the handoffs and the
    /// loads after the switch only what comes after. It only shortens the
    /// switch: if a node cannot (or an older node does not know the call),
    /// the ranges load whole after it.
    pub async fn load_ahead(&mut self) -> Result<(), OperatorError> {
        (self.events)(Event::LoadingAhead);
        if !self.prepare("the chains").await {
            return Ok(());
        }
        let client = self.client;
        self.retrying(2, "createSnapshots", false, || client.create_snapshots(false)).await?;
        self.prepare("written meanwhile").await;
        Ok(())
    }

    /// One `/prepareScale` on every node; whether every node loaded ahead.
    async fn prepare(&mut self, what: &'static str) -> bool {
        match self.client.prepare_scale(&self.next).await {
            Ok(per_node) => {
                for (node, ranges, entries) in per_node.into_iter().filter(|(_, r, _)| *r > 0) {
                    (self.events)(Event::LoadedAhead { what, node, ranges, entries });
                }
                true
            }
            Err(e) => {
                (self.events)(Event::NotLoadedAhead(&e));
                false
            }
        }
    }

    /// Step 3: every node adopts the new view; returns its epoch. Checks
    /// the new list first ([`Scale::check_new_list`]) unless the switch
    /// was made already (a resumed scale).
    pub async fn switch(&mut self) -> Result<u64, OperatorError> {
        if self.resuming.is_none() {
            self.check_new_list().await?;
        }
        (self.events)(Event::Switching);
        let (client, next) = (self.client, self.next.clone());
        self.retrying(3, "scale", false, || client.scale(&next)).await
    }

    /// Step 4: waits until no node of `epoch` loads or drains a range and
    /// every node answers on that epoch.
    pub async fn wait_for_handoffs(&mut self, epoch: u64) -> Result<(), OperatorError> {
        (self.events)(Event::Waiting { moved: self.moved, epoch });
        let everyone = self.everyone();
        loop {
            let (mut loading, mut draining, mut keys) = (0usize, 0usize, 0u64);
            let (mut unreachable, mut behind) = (Vec::new(), Vec::new());
            for address in &everyone {
                match self.client.get_info_at(address).await {
                    Ok(i) if i.epoch > epoch => {
                        return Err(OperatorError::Overtaken {
                            address: address.clone(),
                            theirs: i.epoch,
                            ours: epoch,
                        })
                    }
                    Ok(i) if i.epoch == epoch => {
                        loading += i.ranges_loading.len();
                        draining += i.ranges_draining.len();
                        keys += i.keys_count;
                    }
                    Ok(i) => {
                        // Has not adopted the new view yet (it re-reads it by itself).
                        loading += 1;
                        behind.push(format!("{address} on epoch {}", i.epoch));
                    }
                    Err(_) => unreachable.push(address.clone()),
                }
            }
            let progress = Progress {
                moved: self.moved,
                loaded: self.moved.saturating_sub(loading),
                handed_off: self.moved.saturating_sub(draining),
                behind,
                keys,
                elapsed: self.started.elapsed(),
                unreachable,
            };
            (self.events)(Event::Progress(&progress));
            if loading == 0 && draining == 0 && progress.unreachable.is_empty() {
                return Ok(());
            }
            if Instant::now() > self.deadline {
                return Err(OperatorError::TimedOut {
                    timeout: self.timeout,
                    resume: Box::new(self.resume()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Step 5: completes the scale on every node, old and new.
    pub async fn complete(&mut self) -> Result<(), OperatorError> {
        (self.events)(Event::Completing);
        let client = self.client;
        for address in self.everyone() {
            self.retrying(5, "scaleComplete", true, || client.scale_complete_at(&address)).await?;
        }
        Ok(())
    }

    /// Runs a step again while it fails for a reason that may pass (a node
    /// restarting; with `moving`, ranges still moving), until the deadline.
    /// Every step is idempotent, so running one twice is safe.
    async fn retrying<T, F, Fut>(
        &mut self,
        step: u8,
        what: &'static str,
        moving: bool,
        mut call: F,
    ) -> Result<T, OperatorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        // A fixed delay: the step waits for a node or a range, not for a
        // backlog that retries would add to.
        let mut backoff = Backoff::new(RETRY_DELAY, RETRY_DELAY);
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let passing = error.is_retryable()
                || matches!(&error, ClientError::Rejected { status, code, .. }
                    if *status == 503 || (moving && *status == 409 && code == "scale_in_progress"));
            if !passing || Instant::now() > self.deadline {
                return Err(OperatorError::Step { step, what, error, resume: Box::new(self.resume()) });
            }
            (self.events)(Event::Retrying(&error));
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn targets_give_the_new_list() {
        let old = list("a:1,b:2");
        assert_eq!(Target::To(list("a:1,b:2,c:3")).next(&old).unwrap(), list("a:1,b:2,c:3"));
        assert_eq!(Target::Add(list("http://c:3")).next(&old).unwrap(), list("a:1,b:2,c:3"));
        // Already added by an interrupted run of the same command.
        let resumed = list("a:1,b:2,c:3");
        assert_eq!(Target::Add(list("c:3")).next(&resumed).unwrap(), resumed);
        assert_eq!(Target::Remove(1).next(&old).unwrap(), list("a:1"));
    }

    #[test]
    fn impossible_targets_are_invalid() {
        let old = list("a:1,b:2");
        for target in [
            Target::Remove(2),
            Target::To(list("b:2,a:1")),
            Target::To(list("a:1,a:1")),
            Target::To(list("a:1,nope")),
            Target::Add(list("a:1,c:3,c:3")),
        ] {
            assert!(matches!(target.next(&old), Err(OperatorError::Invalid(_))), "{target:?}");
        }
    }

    #[test]
    fn progress_summary_leaves_out_the_clock_and_keys() {
        let p = |keys, secs| Progress {
            moved: 32,
            loaded: 10,
            handed_off: 12,
            behind: vec!["c:3 on epoch 4".into()],
            unreachable: vec!["d:4".into()],
            keys,
            elapsed: Duration::from_secs(secs),
        };
        assert_eq!(p(1, 1).summary(), p(2, 9).summary());
        assert_eq!(
            p(5, 2).to_string(),
            "      loaded 10/32, handed off 12/32, behind: c:3 on epoch 4, unreachable: d:4, 5 keys, 2.0s"
        );
    }
}
