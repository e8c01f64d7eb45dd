//! What a session looks like from outside.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The process is starting (or restarting) and not ready yet.
    Starting,
    /// Ready, nothing running.
    Idle,
    /// Running an execution or a query.
    Busy,
    /// Closed for good.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    /// UUID.
    pub id: String,
    /// Name given at creation (defaults to the id).
    pub name: String,
    /// `python`, `bash` or `node`.
    pub language: String,
    /// Interpreter version, when the bootstrap reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_version: Option<String>,
    pub state: SessionState,
    /// Process id of the language process, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Executions counted so far (those with `store_history`).
    pub execution_count: u64,
    /// Requests waiting behind the running one.
    pub queued: usize,
    /// How many times the process was (re)started.
    pub starts: u64,
    /// Where the process runs when it is sandboxed (absent: a local process on the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxInfo>,
}

/// A sandbox a session runs in, and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    /// `docker`.
    pub kind: String,
    /// The image the container runs.
    pub image: String,
    /// The engine's API version in use (after negotiation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The container of the current process, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub limits: SandboxLimits,
}

/// Limits of a sandbox. Memory sizes are in bytes; swap is off (memory+swap = memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxLimits {
    pub memory: u64,
    /// CPUs (fractions allowed).
    pub cpus: f64,
    /// Maximum number of processes and threads.
    pub pids: u64,
    /// Docker network mode: `none` (no network) by default.
    pub network: String,
    /// The root filesystem is read-only; `/work` and `/tmp` are size-limited tmpfs mounts.
    pub read_only_root: bool,
    pub workdir: String,
    pub workdir_size: u64,
    pub tmp_size: u64,
    /// The user the process runs as (`uid:gid`).
    pub user: String,
    /// A host directory mounted as the work directory (instead of the tmpfs), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Whether that directory is writable (it is read-only unless asked).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mount_writable: bool,
}

/// The sandbox a new session asks for (`create_session`); unset fields take the host's settings,
/// then the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxRequest {
    /// `docker`, or `none` for a process on the host (refused when the host is sandboxed).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Docker network mode (`none` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}
