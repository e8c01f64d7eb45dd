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

/// What the binary's allocator does when a host goes idle: hand back what it caches, so that an
/// idle host's memory is what it uses (see `main.rs`). Set once, by the binary; a library user
/// with another allocator leaves it unset.
static ALLOCATOR_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Register what [`trim_allocator`] runs (the first registration wins).
pub fn set_allocator_trim(trim: fn()) {
    let _ = ALLOCATOR_TRIM.set(trim);
}

/// Give cached allocator memory back, if the binary said how; call it on the thread that did
/// the work (caches are per thread), once idle.
pub fn trim_allocator() {
    if let Some(trim) = ALLOCATOR_TRIM.get() {
        trim();
    }
}

/// Unmap the binary's code and constants when a long-lived host has started or gone idle.
///
/// Start-up (argument parsing, logging, the connection file, binding, the session's launch)
/// runs once, but every page of the binary it touched stays mapped for the life of the
/// process, and the kernel maps 64 KiB around each page faulted in: about 10 MB of a host's
/// resident memory was code it never ran again. `MADV_DONTNEED` on the binary's read-only,
/// never-written mappings drops those mappings only: the pages stay in the page cache, so the
/// code the host runs next is mapped back by a minor fault, with no I/O. Mappings with any
/// anonymous (copied on write) page, such as relocated data, are left alone, so nothing but
/// the file's own bytes can come back.
#[cfg(target_os = "linux")]
pub fn release_code() {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return;
    };
    let exe = exe.to_string_lossy().into_owned();
    let mut released = 0usize;
    let mut current: Option<(usize, usize)> = None;
    let mut clean = false;
    let mut flush = |range: Option<(usize, usize)>, clean: bool| {
        if let (Some((start, end)), true) = (range, clean) {
            // SAFETY: the range is a whole mapping of our own executable, read-only and with no
            // private pages: dropping its page table entries only makes later reads fault the
            // same file bytes back in.
            if unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            } == 0
            {
                released += end - start;
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            flush(current.take(), clean);
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            clean = false;
            if path == exe && perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    current = Some((a, b));
                    clean = true;
                }
            }
        } else if current.is_some() {
            // A page written before the mapping was made read-only (relocated data) is an
            // anonymous copy; any one keeps the mapping. (`Private_Dirty` is no guide: it also
            // counts file pages not yet written back, as after a fresh build.)
            if line.starts_with("Anonymous:") && line.split_whitespace().nth(1) != Some("0") {
                clean = false;
            }
        }
    }
    flush(current.take(), clean);
    tracing::debug!(bytes = released, "code mappings released");
}

#[cfg(not(target_os = "linux"))]
pub fn release_code() {}

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
