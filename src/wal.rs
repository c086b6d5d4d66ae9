//! The write-ahead log: every acknowledged put or claim is in it.
//!
//! Range actors append records (already applied to their table) and get a
//! sequence number back; a request is acknowledged once the log is durable up
//! to the highest number its ranges returned. One writer thread does group
//! commit: it takes everything queued, writes it, `fdatasync`s once, and
//! publishes the new durable sequence number. Because a range actor appends
//! in the order it applies, an answer that depends on an earlier write (a
//! claim seeing `existed`) is never acknowledged before that write is
//! durable.
//!
//! Files are `<data_dir>/wal/<first seq, 20 digits>.wal`; a new one is started
//! at every open and when the current one passes [`FILE_BYTES`]. Record:
//!
//! ```text
//! len u32 LE | crc32 (IEEE) of payload u32 LE | payload:
//!   seq u64 | range u32 | count u32 | count × (lo u64, hi u32, expiry u32)   (all LE)
//! ```
//!
//! Replay stops at the first bad record of the newest file (a torn tail from
//! a crash), which it cuts off; a bad record in any older file is corruption
//! and an error naming the file and offset.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::fingerprint::{Expiry, TableKey};

/// A file is rotated once it passes this size.
pub const FILE_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const PAYLOAD_HEADER: usize = 16;
const ENTRY: usize = 16;
/// No record is larger: one range's share of a request of at most 10 M keys.
const MAX_PAYLOAD: usize = PAYLOAD_HEADER + ENTRY * 10_000_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {message}")]
    Io { path: String, message: String },
    #[error("WAL is corrupt: {0}")]
    Corrupt(String),
    #[error("write not durable: {0}")]
    Failed(String),
}

fn io_err(path: &Path, e: std::io::Error) -> WalError {
    WalError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub range: u32,
    pub entries: Vec<(TableKey, Expiry)>,
}

/// What the writer has made durable.
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every record with `seq <= upto` is on disk.
    upto: u64,
    /// Why the last attempt to write failed, while the writer retries;
    /// `None` once it succeeds again.
    failing: Option<String>,
}

struct Queue {
    /// The next sequence number to hand out.
    next_seq: u64,
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// Highest sequence number in `buf`.
    last_in_buf: u64,
    /// A requested rotation: the bytes of `buf` before this offset belong
    /// to the current file, the rest to a new file named by the seq.
    rotate: Option<(usize, u64)>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// Handle to the log; cheap to clone, shared by every range actor.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    dir: PathBuf,
}

impl Wal {
    /// Opens the log in `dir` for appending, after [`replay`] has read it.
    /// `next_seq` is one past the highest sequence number replayed.
    pub fn open(dir: &Path, next_seq: u64) -> Result<(Wal, std::thread::JoinHandle<()>), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let file = create_file(dir, next_seq)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { next_seq, buf: Vec::new(), last_in_buf: 0, rotate: None, stop: false }),
            wake: Condvar::new(),
        });
        let (tx, rx) = watch::channel(Durable { upto: next_seq.saturating_sub(1), failing: None });
        let writer = Writer {
            dir: dir.to_path_buf(),
            shared: shared.clone(),
            durable: tx,
            file,
            written: 0,
            dirty_tail: false,
        };
        let handle = std::thread::Builder::new()
            .name("keydb-wal".into())
            .spawn(move || writer.run())
            .map_err(|e| io_err(dir, e))?;
        Ok((Wal { shared, durable: rx, dir: dir.to_path_buf() }, handle))
    }

    /// Queues one record and returns its sequence number. Never blocks on I/O.
    pub fn append(&self, range: u32, entries: &[(TableKey, Expiry)]) -> u64 {
        let mut q = self.lock();
        let seq = q.next_seq;
        q.next_seq += 1;
        encode_record(&mut q.buf, seq, range, entries);
        q.last_in_buf = seq;
        drop(q);
        self.shared.wake.notify_one();
        seq
    }

    /// Waits until every record up to `seq` is on disk, or fails at once
    /// while the writer cannot write (the record stays queued and is
    /// written once the disk takes it again).
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        if crate::testing::broken(crate::testing::Break::AckBeforeWal) {
            return Ok(());
        }
        let mut rx = self.durable.clone();
        let state = rx
            .wait_for(|d| d.upto >= seq || d.failing.is_some())
            .await
            .map_err(|_| WalError::Failed("the WAL writer stopped".into()))?;
        match &state.failing {
            Some(m) if state.upto < seq => Err(WalError::Failed(m.clone())),
            _ => Ok(()),
        }
    }

    /// Why the log cannot write right now, if it cannot.
    pub fn failing(&self) -> Option<String> {
        self.durable.borrow().failing.clone()
    }

    /// Starts a new file for the records from now on and returns its first
    /// sequence number: every record below it was appended (and applied to
    /// its table) before this call, and none at or above it goes to an
    /// older file. Checkpoints use it to truncate the log.
    pub fn rotate(&self) -> u64 {
        let mut q = self.lock();
        let seq = q.next_seq;
        // A rotation still pending is superseded: its records stay in the
        // current file, which is only deleted once a later file exists.
        q.rotate = Some((q.buf.len(), seq));
        drop(q);
        self.shared.wake.notify_one();
        seq
    }

    /// Deletes the files that hold only records below `seq`.
    pub fn truncate_below(&self, seq: u64) -> Result<usize, WalError> {
        let files = list_files(&self.dir)?;
        let mut removed = 0;
        for pair in files.windows(2) {
            // A file's records lie below the next file's first sequence number.
            if pair[1].0 <= seq {
                std::fs::remove_file(&pair[0].1).map_err(|e| io_err(&pair[0].1, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes in the log's files.
    pub fn disk_bytes(&self) -> u64 {
        list_files(&self.dir)
            .map(|files| files.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Asks the writer to flush what is queued and stop.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.shared.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock is a bug elsewhere; the queue
        // itself stays consistent, so keep going.
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Writer {
    dir: PathBuf,
    shared: Arc<Shared>,
    durable: watch::Sender<Durable>,
    file: (File, PathBuf),
    /// Bytes of the current file that are synced; a failed write is cut
    /// back to this length before anything else is written.
    written: u64,
    /// A write or sync failed after `written`: the file may hold a partial
    /// or unsynced tail.
    dirty_tail: bool,
}

/// One group commit in progress: what is left of it survives a failed
/// attempt, so a retry writes each record exactly once.
struct Batch {
    buf: Vec<u8>,
    /// `buf[..done]` is durable.
    done: usize,
    /// Highest sequence number in `buf`.
    last: u64,
    /// A rotation at this offset of `buf`, to a file named by the seq.
    rotate: Option<(usize, u64)>,
}

/// Delays between attempts while the disk refuses writes.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

impl Writer {
    fn run(mut self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let (mut batch, stop) = {
                let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while q.buf.is_empty() && q.rotate.is_none() && !q.stop {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                let batch = Batch {
                    buf: std::mem::take(&mut q.buf),
                    done: 0,
                    last: q.last_in_buf,
                    rotate: q.rotate.take(),
                };
                (batch, q.stop)
            };
            if !stop && crate::testing::broken(crate::testing::Break::AckBeforeWal) {
                // Broken on purpose: requests were acknowledged already, and
                // a lagging writer leaves them in memory only for a while.
                std::thread::sleep(Duration::from_millis(300));
            }
            // Retry this batch until it is durable. Its records are already
            // in the tables, so they must reach the disk before any later
            // record; meanwhile `failing` makes the node refuse new writes,
            // and waiting requests answer an error (never an acknowledgement).
            while let Err(e) = self.commit(&mut batch) {
                crate::metrics::METRICS.wal_errors.inc();
                if self.durable.borrow().failing.is_none() {
                    log::error!("{e}; writes are refused until the WAL can write again");
                }
                self.durable.send_modify(|d| d.failing = Some(e.to_string()));
                if self.wait_or_stop(backoff.next_delay()) {
                    return;
                }
            }
            if self.durable.borrow().failing.is_some() {
                log::info!("the WAL writes again; writes are accepted");
                backoff.reset();
            }
            self.durable.send_modify(|d| {
                d.failing = None;
                if !batch.buf.is_empty() {
                    d.upto = batch.last;
                }
            });
            if stop {
                return;
            }
        }
    }

    /// Sleeps for `delay` unless asked to stop first; returns whether to stop.
    fn wait_or_stop(&self, delay: Duration) -> bool {
        let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (q, _) =
            self.shared.wake.wait_timeout_while(q, delay, |q| !q.stop).unwrap_or_else(|e| e.into_inner());
        q.stop
    }

    fn commit(&mut self, batch: &mut Batch) -> Result<(), WalError> {
        if let Some((offset, seq)) = batch.rotate {
            self.write(&batch.buf[batch.done..offset])?;
            batch.done = offset;
            self.start_file(seq)?;
            batch.rotate = None;
        }
        self.write(&batch.buf[batch.done..])?;
        batch.done = batch.buf.len();
        Ok(())
    }

    fn start_file(&mut self, first_seq: u64) -> Result<(), WalError> {
        if self.file.1 == self.dir.join(file_name(first_seq)) {
            return Ok(());
        }
        self.file = create_file(&self.dir, first_seq)?;
        self.written = 0;
        self.dirty_tail = false;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.dirty_tail {
            // After a failed write or sync the tail's state is unknown (a
            // failed fsync may even drop dirty pages): cut it and write again.
            let (file, path) = &self.file;
            file.set_len(self.written).and_then(|()| file.sync_all()).map_err(|e| io_err(path, e))?;
            self.dirty_tail = false;
        }
        if self.written >= FILE_BYTES {
            // unwrap: `buf` starts with a whole record, whose seq is at bytes 8..16.
            self.start_file(u64::from_le_bytes(buf[HEADER..HEADER + 8].try_into().unwrap()))?;
        }
        let (file, path) = &mut self.file;
        let started = std::time::Instant::now();
        let result = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(e) = result {
            self.dirty_tail = true;
            return Err(io_err(path, e));
        }
        let m = &crate::metrics::METRICS;
        m.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        m.wal_batch_bytes.observe(buf.len() as f64);
        m.wal_bytes.inc_by(buf.len() as u64);
        self.written += buf.len() as u64;
        Ok(())
    }
}

fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn create_file(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(file_name(first_seq));
    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_err(&path, e))?;
    // The new name must survive a crash too.
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
    Ok((file, path))
}

/// The log's files with their first sequence numbers, oldest first.
fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            files.push((first, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every record in `dir`, oldest first, calling `f` for each, and cuts
/// a torn tail off the newest file. Returns one past the highest sequence
/// number seen (1 for an empty log).
pub fn replay(dir: &Path, mut f: impl FnMut(Record)) -> Result<u64, WalError> {
    let files = list_files(dir)?;
    let mut next_seq = files.first().map_or(1, |(first, _)| (*first).max(1));
    for (i, (_, path)) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let mut data = Vec::new();
        File::open(path).and_then(|mut file| file.read_to_end(&mut data)).map_err(|e| io_err(path, e))?;
        let mut pos = 0;
        while pos < data.len() {
            match decode_record(&data[pos..]) {
                Ok((record, len)) => {
                    next_seq = next_seq.max(record.seq + 1);
                    f(record);
                    pos += len;
                }
                Err(why) if newest => {
                    log::warn!(
                        "WAL {}: cutting a torn tail of {} bytes at offset {pos} ({why})",
                        path.display(),
                        data.len() - pos
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|file| {
                            file.set_len(pos as u64)?;
                            file.sync_all()
                        })
                        .map_err(|e| io_err(path, e))?;
                    break;
                }
                Err(why) => {
                    return Err(WalError::Corrupt(format!("{} at offset {pos}: {why}", path.display())));
                }
            }
        }
    }
    // A new file must not reuse the name of an existing one.
    if let Some((first, _)) = files.last() {
        next_seq = next_seq.max(*first + 1);
    }
    Ok(next_seq)
}

/// Appends one record to `buf` (the layout is in the module docs).
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, range: u32, entries: &[(TableKey, Expiry)]) {
    let payload_len = PAYLOAD_HEADER + ENTRY * entries.len();
    let start = buf.len();
    buf.reserve(HEADER + payload_len);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&range.to_le_bytes());
    buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (k, e) in entries {
        buf.extend_from_slice(&k.lo.to_le_bytes());
        buf.extend_from_slice(&k.hi.to_le_bytes());
        buf.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `data`: the record and its length in
/// bytes, or why there is no whole, intact record there.
pub fn decode_record(data: &[u8]) -> Result<(Record, usize), String> {
    if data.len() < HEADER {
        return Err(format!("{} bytes left, less than a record header", data.len()));
    }
    // unwrap (all below): each slice has exactly the array's length.
    let len = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().unwrap());
    if !(PAYLOAD_HEADER..=MAX_PAYLOAD).contains(&len) || (len - PAYLOAD_HEADER) % ENTRY != 0 {
        return Err(format!("impossible record length {len}"));
    }
    let Some(payload) = data.get(HEADER..HEADER + len) else {
        return Err(format!("record of {len} bytes cut short"));
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let seq = u64::from_le_bytes(payload[0..8].try_into().unwrap());
    let range = u32::from_le_bytes(payload[8..12].try_into().unwrap());
    let count = u32::from_le_bytes(payload[12..16].try_into().unwrap()) as usize;
    if count * ENTRY + PAYLOAD_HEADER != len {
        return Err(format!("record announces {count} entries in {len} bytes"));
    }
    let entries = payload[PAYLOAD_HEADER..]
        .chunks_exact(ENTRY)
        .map(|c| {
            let key = TableKey {
                lo: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                hi: u32::from_le_bytes(c[8..12].try_into().unwrap()),
            };
            (key, u32::from_le_bytes(c[12..16].try_into().unwrap()))
        })
        .collect();
    Ok((Record { seq, range, entries }, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries(n: u32) -> Vec<(TableKey, Expiry)> {
        (0..n).map(|i| (TableKey { lo: u64::from(i) * 31, hi: i }, 2_000_000_000 + i)).collect()
    }

    fn read_all(dir: &Path) -> (Vec<Record>, u64) {
        let mut out = Vec::new();
        let next = replay(dir, |r| out.push(r)).unwrap();
        (out, next)
    }

    #[actix_web::test]
    async fn append_wait_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, handle) = Wal::open(dir.path(), 1).unwrap();
        let a = wal.append(3, &entries(5));
        let b = wal.append(7, &[]);
        wal.wait_durable(b).await.unwrap();
        assert_eq!((a, b), (1, 2));
        wal.stop();
        handle.join().unwrap();
        let (records, next) = read_all(dir.path());
        assert_eq!(next, 3);
        assert_eq!(records[0], Record { seq: 1, range: 3, entries: entries(5) });
        assert_eq!(records[1], Record { seq: 2, range: 7, entries: vec![] });
        // Reopening continues the numbering in a new file.
        let (wal, handle) = Wal::open(dir.path(), next).unwrap();
        assert_eq!(wal.append(1, &entries(1)), 3);
        wal.stop();
        handle.join().unwrap();
        assert_eq!(read_all(dir.path()).0.len(), 3);
        // Truncation drops the first file only once everything in it is below.
        assert_eq!(wal.truncate_below(2).unwrap(), 0);
        assert_eq!(wal.truncate_below(3).unwrap(), 1);
        assert_eq!(read_all(dir.path()).0.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[actix_web::test]
    async fn rotation_splits_at_the_returned_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, handle) = Wal::open(dir.path(), 1).unwrap();
        for i in 0..5 {
            wal.append(i, &entries(2));
        }
        let cut = wal.rotate();
        assert_eq!(cut, 6);
        let last = wal.append(9, &entries(1));
        wal.wait_durable(last).await.unwrap();
        // Everything below the cut can go; what came after stays.
        assert_eq!(wal.truncate_below(cut).unwrap(), 1);
        wal.stop();
        handle.join().unwrap();
        let (records, _) = read_all(dir.path());
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6]);
    }

    fn write_log(dir: &Path, n: u32) -> PathBuf {
        let (wal, handle) = Wal::open(dir, 1).unwrap();
        for i in 0..n {
            wal.append(i, &entries(i));
        }
        wal.stop();
        handle.join().unwrap();
        list_files(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn torn_tail_is_cut_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 10);
        let full = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 7).unwrap();
        let (records, _) = read_all(dir.path());
        assert_eq!(records.len(), 9);
        assert!(records.iter().enumerate().all(|(i, r)| r.entries == entries(i as u32)));
        // The cut is permanent: a second replay sees the same, with no warning.
        assert!(std::fs::metadata(&path).unwrap().len() < full - 7);
        assert_eq!(read_all(dir.path()).0.len(), 9);
    }

    #[test]
    fn corruption_in_an_older_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 4);
        let mut data = std::fs::read(&path).unwrap();
        data[30] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        // A newer file exists, so the damaged one is not a torn tail.
        let (wal, handle) = Wal::open(dir.path(), 100).unwrap();
        wal.append(0, &entries(1));
        wal.stop();
        handle.join().unwrap();
        let err = replay(dir.path(), |_| {}).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any damage to the newest file's tail leaves a prefix of the records.
        #[test]
        fn damaged_tail_yields_a_prefix(cut in 0usize..2000, flip in proptest::option::of((0usize..2000, 1u8..=255))) {
            let dir = tempfile::tempdir().unwrap();
            let path = write_log(dir.path(), 12);
            let mut data = std::fs::read(&path).unwrap();
            if let Some((pos, x)) = flip {
                let i = pos % data.len();
                data[i] ^= x;
            }
            data.truncate(data.len().saturating_sub(cut));
            std::fs::write(&path, &data).unwrap();
            let (records, _) = read_all(dir.path());
            for (i, r) in records.iter().enumerate() {
                prop_assert_eq!(r.seq, i as u64 + 1);
                prop_assert_eq!(&r.entries, &entries(i as u32));
            }
        }
    }
}
