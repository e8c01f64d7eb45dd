//! The tools' arguments (their JSON Schemas come from these types) and descriptions.

use std::collections::BTreeMap;

use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;

/// How long `execute` and `wait` wait by default, in seconds.
pub(crate) const DEFAULT_WAIT_S: f64 = 30.0;
/// The longest wait a call may ask for, in seconds.
pub(crate) const MAX_WAIT_S: f64 = 600.0;
/// The largest `code` accepted, in bytes.
pub(crate) const MAX_CODE: usize = 4 << 20;
/// `read_output`'s default and largest page, in bytes.
pub(crate) const DEFAULT_PAGE: usize = 64 << 10;
pub(crate) const MAX_PAGE: usize = 4 << 20;
/// The largest `send_input` text, in bytes.
pub(crate) const MAX_INPUT: usize = 1 << 20;
/// The largest file `upload_file` and `download_file` move, in bytes (a `--connect`ed host may
/// allow less: its `max_message`).
pub(crate) const MAX_FILE: u64 = 32 << 20;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecuteArgs {
    /// The code to run (not empty, no NUL bytes, at most 4 MiB). State persists between calls
    /// in the same session: variables, imports, the working directory.
    pub code: String,
    /// `python` (the default), `bash` or `node` (aliases: `py`, `sh`, `js`, `javascript`).
    /// Picks the session `mcp-<language>` when `session` is not given.
    #[serde(default)]
    pub language: Option<String>,
    /// A session id or name. A name that does not exist yet starts a new session of
    /// `language` under that name. Default: `mcp-<language>`.
    #[serde(default)]
    pub session: Option<String>,
    /// How long this call waits for the run, in seconds (default 30, at most 600). If the run
    /// takes longer, the call returns the output so far and the execution id; the run keeps
    /// going: pick it up with `wait` or `read_output`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 600))]
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadOutputArgs {
    /// The execution id an `execute` call returned (such as `e3`).
    pub execution: String,
    /// Byte offset to start at (default 0). Use the `next_offset` of the previous page.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Bytes to return (default 65536, at most 4194304). A page ends on a character boundary.
    #[serde(default)]
    #[schemars(range(min = 1, max = 4194304))]
    pub limit: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitArgs {
    /// The execution id an `execute` call returned (such as `e3`).
    pub execution: String,
    /// How long to wait for it to finish, in seconds (default 30, at most 600).
    #[serde(default)]
    #[schemars(range(min = 0, max = 600))]
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSessionArgs {
    /// `python`, `bash` or `node` (aliases: `py`, `sh`, `js`, `javascript`).
    pub language: String,
    /// A unique name, usable wherever a session id is (default: the new session's id).
    #[serde(default)]
    pub name: Option<String>,
    /// Working directory of the process (default: the server's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for the process.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionArgs {
    /// A session id or name (see `list_sessions`).
    pub session: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendInputArgs {
    /// A session id or name (see `list_sessions`).
    pub session: String,
    /// The answer. If the running program waits in an input request (Python `input()` or
    /// `getpass()`), this is its answer (without a newline). Otherwise it is written to the
    /// program's terminal, with a newline added unless it ends with one.
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadFileArgs {
    /// A session id or name (see `list_sessions`).
    pub session: String,
    /// Where to write, relative to the session's work directory (its working directory; `/work`
    /// in a sandbox), `/`-separated. The parent directory must exist. Absolute paths, `..` and
    /// symlinks are refused.
    pub path: String,
    /// The file's bytes, base64 (standard alphabet, padded; at most 32 MiB decoded).
    pub data_base64: String,
    /// `overwrite` (the default) replaces an existing file; `create` refuses to.
    #[serde(default)]
    pub mode: Option<spindle_protocol::native::UploadMode>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DownloadFileArgs {
    /// A session id or name (see `list_sessions`).
    pub session: String,
    /// The file, relative to the session's work directory. Absolute paths, `..` and symlinks
    /// are refused.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListFilesArgs {
    /// A session id or name (see `list_sessions`).
    pub session: String,
    /// A directory relative to the session's work directory (default: the work directory
    /// itself).
    #[serde(default)]
    pub path: Option<String>,
}

fn tool<T: JsonSchema + 'static>(name: &'static str, description: &'static str) -> Tool {
    Tool::new(name, description, schema_for_type::<T>())
}

/// Every tool, as `tools/list` shows them.
pub(crate) fn all() -> Vec<Tool> {
    let ro = || ToolAnnotations::new().read_only(true);
    vec![
        tool::<ExecuteArgs>(
            "execute",
            "Run code in a persistent Spindle session (Python, bash or Node.js) and return its output: \
console text (stdout and stderr in order, the head and tail kept within the output budget with a marker \
saying how many bytes were dropped), the result value, errors with their traceback (isError is true when \
the run raised or the process died), images as image content (PNG/JPEG), HTML tables as Markdown. \
The last line names the execution id and the outcome. The session is created on first use (default \
`mcp-<language>`) and keeps its state between calls. If the run takes longer than timeout_s (default \
30 s), the call returns the output so far and says the run continues: use `wait` or `read_output` \
with the execution id, or `interrupt`. If the program asks for input, the call returns at once with \
\"waiting for input: <prompt>\": answer with `send_input`.",
        ),
        tool::<ReadOutputArgs>(
            "read_output",
            "Page through the full console output (stdout and stderr, exactly as written) of an execution, \
finished or still running, including what the output budget cut from `execute`'s answer. \
Returns bytes offset..offset+limit (default 64 KiB) as text, then a line with the total bytes, the \
next_offset and whether the execution finished.",
        )
        .with_annotations(ro()),
        tool::<WaitArgs>(
            "wait",
            "Wait up to timeout_s (default 30 s) for an execution to finish, then return what `execute` \
would have: the output under the output policy, images, errors, and the outcome. Returns early \
if the program waits for input.",
        )
        .with_annotations(ro()),
        tool::<NoArgs>(
            "list_sessions",
            "List the live sessions: id, name, language, state (idle, busy, starting), process id and \
execution count.",
        )
        .with_annotations(ro()),
        tool::<CreateSessionArgs>(
            "create_session",
            "Start a new session of a language, optionally named, in a working directory, with extra \
environment variables. Returns the session's info. `execute` also creates sessions on first use.",
        ),
        tool::<SessionArgs>(
            "close_session",
            "Close a session for good: its process and every process it started are ended.",
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
        tool::<SessionArgs>(
            "restart_session",
            "Kill the session's process and start a fresh one (its state is lost; a running execution \
ends as died). Returns the session's info.",
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
        tool::<SessionArgs>(
            "interrupt",
            "Interrupt the session's running execution, like Ctrl-C (SIGINT to the program in the \
foreground of its terminal). Works while an `execute` of the same session is waiting.",
        ),
        tool::<SendInputArgs>(
            "send_input",
            "Answer a program that waits for input: the pending input request (Python input(), getpass()) \
if there is one, else a line written to the program's terminal (for bash `read`, y/n prompts).",
        ),
        tool::<UploadFileArgs>(
            "upload_file",
            "Write a file into a session's work directory (the session's working directory; `/work` inside \
a sandbox), so code run there can read it. The content is base64 (data_base64), so any bytes work. \
Paths are relative and confined to the work directory: absolute paths, `..` and symlinks (wherever \
they point) are refused. Replaces an existing file unless mode is `create`.",
        ),
        tool::<DownloadFileArgs>(
            "download_file",
            "Read a file from a session's work directory (for example one that code wrote). A UTF-8 text \
file comes back as text content, exactly; any other file as an embedded resource with the bytes in \
base64 (blob). Paths are confined to the work directory as for upload_file; at most 32 MiB.",
        )
        .with_annotations(ro()),
        tool::<ListFilesArgs>(
            "list_files",
            "List a directory of a session's work directory: each entry's name, kind (file, dir, symlink, \
other), size in bytes and modification time (seconds since the epoch). Symlinks are shown, never \
followed.",
        )
        .with_annotations(ro()),
    ]
}
