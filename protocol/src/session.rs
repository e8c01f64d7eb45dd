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
}
