//! What a language must provide. The kernel runs processes and moves bytes; a [`Language`] says
//! how to start its interpreter and how to put requests into the words its bootstrap reads.
//! See `docs/child-protocol.md` for the contract between the kernel and a bootstrap.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

/// Everything needed to start one language process.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// The interpreter, already resolved to a real binary.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment for the child (on top of the session's).
    pub env: HashMap<String, String>,
    /// Files to write into the session's private run directory before start (name → bytes),
    /// such as a bootstrap script.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Where the kernel is starting a process: what a language may put in its [`LaunchSpec`].
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// The session's private run directory (mode 0700); files of the spec are written here.
    pub run_dir: PathBuf,
    /// The session's own environment variables (the host's are inherited besides).
    pub env: HashMap<String, String>,
}

/// A request to the child, in the kernel's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildRequest {
    Execute {
        id: String,
        code: String,
        silent: bool,
        store_history: bool,
        allow_stdin: bool,
        active_lines: bool,
        user_expressions: serde_json::Map<String, Value>,
        execution_count: u64,
        /// The frontend's request, for the code to see (a Jupyter request's header: what
        /// `get_ipython().kernel.get_parent()` returns in Python).
        parent: Option<Value>,
    },
    InputReply {
        value: String,
    },
    Complete {
        id: String,
        code: String,
        cursor_pos: usize,
    },
    Inspect {
        id: String,
        code: String,
        cursor_pos: usize,
        detail_level: u8,
    },
    IsComplete {
        id: String,
        code: String,
    },
    /// A comm message from the frontend, for the code's comm handlers. Like an execution it
    /// ends with `done`, and what the handler prints belongs to it.
    Comm {
        id: String,
        message: Box<spindle_protocol::CommMessage>,
        parent: Option<Value>,
    },
    /// Which comms are open (those with `target_name`, or all); the reply is
    /// `{"comms": {"<comm id>": {"target_name": "…"}}}`.
    CommInfo {
        id: String,
        target_name: Option<String>,
    },
}

impl ChildRequest {
    /// The request id, for everything that ends with `done`.
    pub fn id(&self) -> Option<&str> {
        match self {
            ChildRequest::Execute { id, .. }
            | ChildRequest::Complete { id, .. }
            | ChildRequest::Inspect { id, .. }
            | ChildRequest::IsComplete { id, .. }
            | ChildRequest::Comm { id, .. }
            | ChildRequest::CommInfo { id, .. } => Some(id),
            ChildRequest::InputReply { .. } => None,
        }
    }

    /// The JSON-line form that Python and Node bootstraps read (see the child protocol).
    pub fn to_json_line(&self) -> Vec<u8> {
        let v = match self {
            ChildRequest::Execute {
                id,
                code,
                silent,
                store_history,
                allow_stdin,
                active_lines,
                user_expressions,
                execution_count,
                parent,
            } => {
                let mut v = serde_json::json!({
                    "op": "execute", "id": id, "code": code, "silent": silent,
                    "store_history": store_history, "allow_stdin": allow_stdin,
                    "active_lines": active_lines, "user_expressions": user_expressions,
                    "execution_count": execution_count,
                });
                if let Some(p) = parent {
                    v["parent"] = p.clone();
                }
                v
            }
            ChildRequest::InputReply { value } => {
                serde_json::json!({"op": "input_reply", "value": value})
            }
            ChildRequest::Complete {
                id,
                code,
                cursor_pos,
            } => {
                serde_json::json!({"op": "complete", "id": id, "code": code, "cursor_pos": cursor_pos})
            }
            ChildRequest::Inspect {
                id,
                code,
                cursor_pos,
                detail_level,
            } => serde_json::json!({"op": "inspect", "id": id, "code": code,
                                    "cursor_pos": cursor_pos, "detail_level": detail_level}),
            ChildRequest::IsComplete { id, code } => {
                serde_json::json!({"op": "is_complete", "id": id, "code": code})
            }
            ChildRequest::Comm {
                id,
                message,
                parent,
            } => serde_json::json!({
                "op": "comm", "id": id, "msg_type": message.msg_type.msg_type(),
                "content": message.jupyter_content(), "metadata": message.metadata,
                "buffers": message.buffers, "parent": parent,
            }),
            ChildRequest::CommInfo { id, target_name } => {
                serde_json::json!({"op": "comm_info", "id": id, "target_name": target_name})
            }
        };
        let mut line = serde_json::to_vec(&v).expect("plain JSON values serialise");
        line.push(b'\n');
        line
    }
}

/// How a request reaches the child.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    /// Bytes for the request FIFO (`$SPINDLE_REQ`).
    pub fifo: Vec<u8>,
    /// Files to (over)write in the run directory first (name → bytes).
    pub files: Vec<(String, Vec<u8>)>,
    /// Bytes to write to the PTY after the files and the FIFO bytes.
    pub pty: Vec<u8>,
}

/// Errors a language reports to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    #[error("{language} interpreter not found: {detail}")]
    InterpreterNotFound { language: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// What the kernel needs from a language.
pub trait Language: Send + Sync + std::fmt::Debug + 'static {
    /// Short name: `python`, `bash`, `node`.
    fn name(&self) -> &str;

    /// How to start the interpreter with its bootstrap.
    fn launch(&self, ctx: &LaunchContext) -> Result<LaunchSpec, LanguageError>;

    /// Put a request into the bootstrap's words. The default sends the JSON line on the FIFO.
    fn encode(&self, req: &ChildRequest) -> Result<Outbound, LanguageError> {
        Ok(Outbound {
            fifo: req.to_json_line(),
            ..Outbound::default()
        })
    }

    /// Turn a raw (`r`) reply frame into reply content. The default parses it as JSON.
    fn parse_raw_reply(&self, req: &ChildRequest, raw: &[u8]) -> Result<Value, LanguageError> {
        let _ = req;
        serde_json::from_slice(raw).map_err(|e| LanguageError::Other(format!("bad reply: {e}")))
    }

    /// Whether the bootstrap keeps a comm registry (Jupyter comms: `comm` and `comm_info`
    /// requests, `comm` messages). Without one the kernel answers for it: no comms are open,
    /// and a comm message cannot be delivered.
    fn supports_comms(&self) -> bool {
        false
    }

    /// Whether `active_line` tracking is available for this language.
    fn supports_active_lines(&self) -> bool {
        true
    }
}
