//! Low-priority threads for bulk work that competes with requests for CPU:
//! encoding snapshot segments and writing local checkpoints.
//!
//! They run at nice 10: on a busy node they get the CPU the requests leave
//! over (about a tenth of a core against one busy request thread) instead
//! of an equal share, so a snapshot of every key barely moves request
//! latency; on an idle node they run at full speed. Work whose latency
//! matters (a handoff during a scale) does not come here.

use std::sync::mpsc;
use std::sync::{LazyLock, Mutex};

type Task = Box<dyn FnOnce() + Send>;

/// Niceness of the threads: 0 is normal, 19 the lowest priority.
const NICE: i32 = 10;

static POOL: LazyLock<mpsc::Sender<Task>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<Task>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    for i in 0..threads {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new().name(format!("keydb-bulk-{i}")).spawn(move || {
            lower_priority();
            loop {
                // The lock is held only while waiting for the next job.
                let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                // A panicking job (a bug) fails its own caller only; the
                // thread lives on for the next.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start a background thread: {e}");
        }
    }
    tx
});

/// Why a task gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BackgroundError {
    #[error("the background threads are gone")]
    Gone,
    #[error("a background task panicked")]
    Panicked,
}

/// Runs `f` on a low-priority thread and waits for its result.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, BackgroundError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        // The waiter may be gone (the node is stopping): nothing to do.
        let _ = tx.send(f());
    });
    POOL.send(task).map_err(|_| BackgroundError::Gone)?;
    rx.await.map_err(|_| BackgroundError::Panicked)
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid, setpriority and sched_setscheduler have no
    // memory-safety preconditions; on Linux they act on the thread whose
    // id they are given, and `param` outlives the call.
    let (nice, idle) = unsafe {
        let tid = libc::gettid();
        let nice = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
        let param = libc::sched_param { sched_priority: 0 };
        (nice, libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param))
    };
    if nice != 0 || idle != 0 {
        log::warn!("cannot lower the priority of a background thread: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    #[actix_web::test]
    async fn runs_jobs_at_a_lower_priority() {
        let nice = super::run(|| {
            // SAFETY: as above.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .await
        .unwrap();
        assert_eq!(nice, super::NICE);
        assert_eq!(super::run(|| 6 * 7).await.unwrap(), 42);
    }
}
