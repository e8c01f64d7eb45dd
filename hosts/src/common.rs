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

/// Logs go to stderr through `tracing`; `SPINDLE_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("SPINDLE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
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
