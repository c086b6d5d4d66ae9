//! Guarantees broken on purpose, for tests that must show they notice.
//!
//! Debug builds (the binaries the test suite runs) read `KEYDB_TEST_BREAK`,
//! a comma-separated list of [`Break`] names, once. Release builds compile
//! every check to `false`: a node users run cannot be told to lose data.

/// A guarantee a test may switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// Acknowledge writes without waiting for the WAL, whose writer then
    /// lags 300 ms a batch: `kill -9` loses acknowledged keys.
    AckBeforeWal,
    /// A range handed off in a scale writes its handoff mark without its
    /// last segment: what it took since the last snapshot is lost.
    SkipHandoffSegment,
    /// A range restored from the object store is listed complete on disk at
    /// once: a restart afterwards starts it from the disk alone.
    ListLoadedComplete,
}

impl Break {
    #[cfg(debug_assertions)]
    fn name(self) -> &'static str {
        match self {
            Break::AckBeforeWal => "ack_before_wal",
            Break::SkipHandoffSegment => "skip_handoff_segment",
            Break::ListLoadedComplete => "list_loaded_complete",
        }
    }
}

/// Whether the test switched `what` off (always false in release builds).
#[cfg(debug_assertions)]
pub fn broken(what: Break) -> bool {
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let list = LIST.get_or_init(|| {
        let list: Vec<String> = std::env::var("KEYDB_TEST_BREAK")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !list.is_empty() {
            log::warn!("KEYDB_TEST_BREAK={list:?}: guarantees are broken on purpose (a test build)");
        }
        list
    });
    list.iter().any(|s| s == what.name())
}

/// Whether the test switched `what` off (always false in release builds).
#[cfg(not(debug_assertions))]
pub fn broken(_: Break) -> bool {
    false
}
