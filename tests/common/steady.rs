//! A writer that must never fail while something is rotated under it (a
//! token, a certificate): 100-key batches in a loop through one of its
//! clients, switchable while it runs, and every key checked at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keydb::client::Client;

use super::wait_until;

pub struct SteadyWriter {
    prefix: String,
    current: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl SteadyWriter {
    /// Starts writing `<prefix>-<batch>-<k>` keys through `clients[0]`.
    pub fn start(rt: &tokio::runtime::Runtime, prefix: &str, clients: Vec<Client>) -> SteadyWriter {
        let current = Arc::new(AtomicUsize::new(0));
        let (stop, done) = (Arc::<AtomicBool>::default(), Arc::<AtomicU64>::default());
        let task = {
            let (current, stop, done, prefix) =
                (Arc::clone(&current), stop.clone(), done.clone(), prefix.to_string());
            rt.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<String> = (0..100).map(|k| format!("{prefix}-{i}-{k}")).collect();
                    let c: &Client = &clients[current.load(Ordering::Relaxed)];
                    c.put(&batch, Duration::from_secs(600)).await.map_err(|e| format!("batch {i}: {e}"))?;
                    i += 1;
                    done.store(i, Ordering::Relaxed);
                }
                Ok(i)
            })
        };
        let writer = SteadyWriter { prefix: prefix.to_string(), current, stop, done, task };
        writer.goes_on();
        writer
    }

    /// From now on, writes through `clients[index]`.
    pub fn switch_to(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// Waits until 20 more batches have been written.
    pub fn goes_on(&self) {
        let from = self.done.load(Ordering::Relaxed);
        wait_until("the writer to go on", Duration::from_secs(30), || {
            self.done.load(Ordering::Relaxed) > from + 20
        });
    }

    /// Stops it; fails the test if any batch failed. Then `reader` must
    /// find every key written.
    pub fn finish(self, rt: &tokio::runtime::Runtime, reader: &Client) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let batches = rt
            .block_on(self.task)
            .unwrap()
            .unwrap_or_else(|e| panic!("a request failed during the rotation: {e}"));
        let prefix = &self.prefix;
        let all: Vec<String> = (0..batches)
            .flat_map(|i| (0..100).map(|k| format!("{prefix}-{i}-{k}")).collect::<Vec<_>>())
            .collect();
        let found: usize = all
            .chunks(10_000)
            .map(|chunk| rt.block_on(reader.get(chunk)).unwrap().iter().filter(|b| **b).count())
            .sum();
        assert_eq!(found, all.len(), "keys written during the rotation are missing");
        batches
    }
}
