//! What `/proc` says about this process, for the `process_*` metrics.
//!
//! Read at scrape time, never cached: a scrape is rare and the files are
//! small. The parsers take the files' text so that they are tested without
//! a `/proc`; only [`ProcessStats::read`] touches the file system, and it
//! fails (the metrics are left out) where there is no Linux `/proc`.

use std::io;

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
}

/// The fields of `/proc/self/stat` that the metrics use, in the kernel's
/// units (clock ticks, pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    /// Since boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl ProcessStats {
    pub fn read() -> io::Result<ProcessStats> {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat")?)?;
        let boot_time = parse_boot_time(&std::fs::read_to_string("/proc/stat")?)?;
        let max_fds = parse_max_fds(&std::fs::read_to_string("/proc/self/limits")?)?;
        let open_fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        let (ticks, page_size) = ticks_and_page_size()?;
        Ok(ProcessStats {
            cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks as f64,
            resident_bytes: stat.resident_pages * page_size,
            virtual_bytes: stat.virtual_bytes,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / ticks as f64,
        })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {what}"))
}

/// `/proc/<pid>/stat`: `pid (comm) state ppid ...`. The command name may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> io::Result<Stat> {
    let (_, rest) = text.rsplit_once(')').ok_or_else(|| invalid("/proc/self/stat"))?;
    // Fields after the name, numbered as in proc(5) from 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).ok_or_else(|| invalid("/proc/self/stat"))
    };
    Ok(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time in Unix seconds.
fn parse_boot_time(text: &str) -> io::Result<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid("/proc/stat"))
}

/// The soft limit of the `Max open files` line of `/proc/self/limits`.
fn parse_max_fds(text: &str) -> io::Result<Option<u64>> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .ok_or_else(|| invalid("/proc/self/limits"))?;
    match line.split_whitespace().next() {
        Some("unlimited") => Ok(None),
        Some(soft) => soft.parse().map(Some).map_err(|_| invalid("/proc/self/limits")),
        None => Err(invalid("/proc/self/limits")),
    }
}

#[cfg(target_os = "linux")]
fn ticks_and_page_size() -> io::Result<(u64, u64)> {
    // SAFETY: sysconf reads a configuration value; no preconditions.
    let (ticks, page_size) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if ticks <= 0 || page_size <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ticks as u64, page_size as u64))
}

#[cfg(not(target_os = "linux"))]
fn ticks_and_page_size() -> io::Result<(u64, u64)> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "process metrics need Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A name with a space and a parenthesis, as a process may choose.
        let text = "4242 (keydb (x) node) S 1 4242 4242 0 -1 4194560 5000 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17630 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            }
        );
        assert!(parse_stat("4242 (keydb) S 1 2").is_err());
        assert!(parse_stat("no name").is_err());
    }

    #[test]
    fn boot_time_and_fd_limit() {
        let stat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1700000000\nprocesses 7\n";
        assert_eq!(parse_boot_time(stat).unwrap(), 1_700_000_000);
        assert!(parse_boot_time("cpu 1 2 3\n").is_err());

        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits).unwrap(), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_fds(unlimited).unwrap(), None);
        assert!(parse_max_fds("Max cpu time unlimited unlimited seconds\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_bytes > 0);
        assert!(stats.virtual_bytes >= stats.resident_bytes);
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(stats.max_fds.is_none_or(|max| max >= stats.open_fds), "{stats:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(
            stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 3600.0,
            "{stats:?}"
        );
    }
}
