//! Settings and plumbing every host shares.

use clap::Args;
use spindle_languages::Interpreters;

/// Where the interpreters are. Each also reads its environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct InterpreterArgs {
    /// Python interpreter (default: python3 on PATH).
    #[arg(long, env = "SPINDLE_PYTHON", global = true, value_name = "PATH")]
    pub python: Option<String>,
    /// Bash (default: bash on PATH).
    #[arg(long, env = "SPINDLE_BASH", global = true, value_name = "PATH")]
    pub bash: Option<String>,
    /// Node.js (default: node on PATH).
    #[arg(long, env = "SPINDLE_NODE", global = true, value_name = "PATH")]
    pub node: Option<String>,
}

impl InterpreterArgs {
    pub fn interpreters(&self) -> Interpreters {
        Interpreters {
            python: self.python.clone(),
            bash: self.bash.clone(),
            node: self.node.clone(),
        }
    }
}

/// Logs go to stderr through `tracing`; `SPINDLE_LOG` (or `RUST_LOG`) sets the filter. Whatever
/// it says, no level logs what the user types, input replies or keys: Spindle's own logs give
/// lengths, never content, and the crates in [`LOG_CAPS`] are held to a level that does not.
pub fn init_logging(default: &str) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter::filter_fn, fmt, EnvFilter};
    let filter = std::env::var("SPINDLE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(filter_fn(|m| log_allowed(m.target(), m.level())))
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}

/// Crates whose logs carry secrets beyond some level, and the most verbose level each may log:
/// rustyline logs every keystroke and edit at debug; rmcp logs whole requests (a `send_input`
/// answer) at debug and trace; bollard logs request and response bodies (container environments)
/// at debug; reqwest's verbose connection log dumps raw HTTP, the API key header included; and
/// portable-pty logs environments (API keys) at trace.
pub const LOG_CAPS: &[(&str, tracing::level_filters::LevelFilter)] = {
    use tracing::level_filters::LevelFilter;
    &[
        ("rustyline", LevelFilter::OFF),
        ("rmcp", LevelFilter::INFO),
        ("bollard", LevelFilter::INFO),
        ("reqwest::connect::verbose", LevelFilter::OFF),
        ("portable_pty", LevelFilter::DEBUG),
    ]
};

/// Whether an event of `target` at `level` may be logged at all (see [`LOG_CAPS`]).
pub fn log_allowed(target: &str, level: &tracing::Level) -> bool {
    for (prefix, cap) in LOG_CAPS {
        let under = target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        if under {
            return *cap >= tracing::level_filters::LevelFilter::from_level(*level);
        }
    }
    true
}

/// Resolves when the process is asked to stop (SIGTERM, SIGINT or SIGHUP).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = hup.recv() => tracing::info!("SIGHUP: shutting down"),
    }
}

/// A multi-threaded runtime sized for this machine.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
        .build()?)
}

#[cfg(test)]
mod log_tests {
    use super::log_allowed;
    use tracing::Level;

    #[test]
    fn secret_bearing_targets_are_capped_whatever_the_filter() {
        assert!(!log_allowed("rustyline", &Level::ERROR));
        assert!(!log_allowed("rustyline::keymap", &Level::DEBUG));
        assert!(!log_allowed("rmcp::service", &Level::DEBUG));
        assert!(log_allowed("rmcp::service", &Level::INFO));
        assert!(!log_allowed("bollard::docker", &Level::DEBUG));
        assert!(!log_allowed("reqwest::connect::verbose", &Level::TRACE));
        assert!(log_allowed("reqwest::connect", &Level::DEBUG));
        assert!(!log_allowed("portable_pty::cmdbuilder", &Level::TRACE));
        // Only whole path segments: a crate named like a prefix is not capped.
        assert!(log_allowed("rustyline_extra", &Level::TRACE));
        assert!(log_allowed("spindle::repl", &Level::TRACE));
    }
}
