//! `keydb-node`: one KeyDB server. Settings come from the defaults (listed in
//! `settings/default.toml`), the file named by `KEYDB_CONFIG` and `KEYDB_*` variables.

use std::io::Write;
use std::process::ExitCode;

use keydb::server::StartError;
use keydb::settings::{Settings, SettingsError};

const HELP: &str = "keydb-node: a KeyDB server node

Usage: keydb-node [--help | --version]

Configured by its defaults (listed in settings/default.toml), then the TOML file named by
KEYDB_CONFIG, then KEYDB_* environment variables, e.g.
  KEYDB_PORT=50051 KEYDB_NODE_ID=0 KEYDB_NODE_ADDRESSES=localhost:50051 keydb-node
Logging: RUST_LOG (default info). See API.md for every setting.";

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        return match arg.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                ExitCode::SUCCESS
            }
            "-V" | "--version" => {
                println!("keydb-node {}", env!("CARGO_PKG_VERSION"));
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("keydb-node: unexpected argument {other:?} (settings come from KEYDB_* variables; see --help)");
                ExitCode::from(2)
            }
        };
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(SettingsError::Invalid(problems)) => {
            for p in problems {
                eprintln!("keydb-node: {p}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("keydb-node: {e}");
            return ExitCode::from(2);
        }
    };
    let node_id = settings.node_id;
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:5} node={node_id} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(PeerErrorsAsDebug(logger))).is_ok() {
        log::set_max_level(max_level);
    }
    log::info!("settings: {settings:?}");
    for name in Settings::ignored_admin_variables(std::env::vars()) {
        log::warn!("{name} is a keydb-admin variable, not a node setting: ignored");
    }
    // A panic is a bug. A node that lost a range actor or the router to one
    // would stay up answering 500 for that range; stopping whole instead
    // lets its supervisor restart it, and the WAL brings back every
    // acknowledged key.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        log::error!("panic: {info}; stopping the node (a restart recovers every acknowledged key)");
        std::process::abort();
    }));
    match actix_web::rt::System::new().block_on(keydb::server::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            log::error!("{e}");
            eprintln!("keydb-node: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("cannot serve: {e}");
            eprintln!("keydb-node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// actix-http reports a peer's malformed or broken connection (garbage,
/// HTTP/2 without TLS, a reset mid-request) as an ERROR. It is the peer's
/// problem, not the node's: a debug line.
struct PeerErrorsAsDebug(env_logger::Logger);

impl log::Log for PeerErrorsAsDebug {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if record.level() == log::Level::Error && record.target().starts_with("actix_http::h1") {
            let demoted = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            if self.0.enabled(demoted.metadata()) {
                self.0.log(&demoted);
            }
            return;
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}
