//! Settings for the kernel, a session, and one execution.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::language::Language;
use crate::launcher::{Launcher, LocalPtyLauncher};

/// Kernel-wide settings.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// How processes are started (local PTY by default).
    pub launcher: Arc<dyn Launcher>,
    /// How long a new process may take to say `ready`.
    pub start_timeout: Duration,
    /// After a timeout's interrupt, how long to wait before killing and restarting.
    pub interrupt_grace: Duration,
    /// Bytes of recent chunks each session keeps in its log, for watchers and replays (about
    /// their JSON size; the newest chunk is always kept). A watcher that falls further behind
    /// is told how many chunks it missed.
    pub watch_log_bytes: usize,
    /// Terminal size given to every PTY (rows, cols).
    pub pty_size: (u16, u16),
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            launcher: Arc::new(LocalPtyLauncher),
            start_timeout: Duration::from_secs(20),
            interrupt_grace: Duration::from_secs(2),
            watch_log_bytes: 64 << 20,
            pty_size: (24, 80),
        }
    }
}

/// How to create one session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub language: Arc<dyn Language>,
    /// A unique name; the id is used when absent.
    pub name: Option<String>,
    /// Working directory of the process (the host's by default).
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub env: HashMap<String, String>,
    /// Default per-execution timeout.
    pub timeout: Option<Duration>,
    /// Default per-execution console output cap in bytes (uncapped when `None`).
    pub output_cap: Option<u64>,
    /// Default maximum image side for downscaled copies.
    pub image_max_dim: Option<u32>,
    /// How this session's processes are started, instead of the kernel's launcher (a sandbox
    /// chosen per session).
    pub launcher: Option<Arc<dyn Launcher>>,
}

impl SessionSpec {
    pub fn new(language: Arc<dyn Language>) -> Self {
        Self {
            language,
            name: None,
            cwd: None,
            env: HashMap::new(),
            timeout: None,
            output_cap: None,
            image_max_dim: None,
            launcher: None,
        }
    }
}

/// Options of one execution. Unset limits fall back to the session's.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Request id; a UUID is made when absent.
    pub id: Option<String>,
    pub timeout: Option<Duration>,
    pub output_cap: Option<u64>,
    pub image_max_dim: Option<u32>,
    /// Jupyter's `silent`: do not count, no result.
    pub silent: bool,
    /// Jupyter's `store_history`: count this execution.
    pub store_history: bool,
    /// Whether `input()` may ask for input (else it fails at once).
    pub allow_stdin: bool,
    /// Report `active_line` chunks.
    pub active_lines: bool,
    /// Expressions to evaluate after the code, by name.
    pub user_expressions: Map<String, Value>,
    /// The frontend's request, handed to the code (a Jupyter host gives the request's header:
    /// Python's `get_ipython().kernel.get_parent()`, which ipywidgets' Output widget reads).
    pub parent: Option<Value>,
    /// Hand this comm message to the code's comm handlers instead of running code (what
    /// `Session::comm` sets): queued, interrupted and streamed like an execution, never counted.
    pub comm: Option<Box<spindle_protocol::CommMessage>>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            id: None,
            timeout: None,
            output_cap: None,
            image_max_dim: None,
            silent: false,
            store_history: true,
            allow_stdin: true,
            active_lines: false,
            user_expressions: Map::new(),
            parent: None,
            comm: None,
        }
    }
}

/// A question to the session that is answered by one reply rather than a chunk stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Complete {
        code: String,
        cursor_pos: usize,
    },
    Inspect {
        code: String,
        cursor_pos: usize,
        detail_level: u8,
    },
    IsComplete {
        code: String,
    },
    /// The open comms, those with `target_name` or all: `{"comms": {"<id>": {"target_name":
    /// "…"}}}`. A language without comms has none.
    CommInfo {
        target_name: Option<String>,
    },
}
