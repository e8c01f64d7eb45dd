//! # spindle-languages
//!
//! One module per language. Each provides a [`Language`](spindle_kernel::Language): how to start
//! the interpreter (resolved once to the real binary), the bootstrap that runs inside the child
//! (kept as a real `.py`/`.sh`/`.js` file beside the module and embedded at build time), and how
//! requests are framed for it.
//!
//! - [`python`]: any CPython ≥ 3.8; no IPython or ipykernel needed.
//! - [`bash`]: an interactive bash reading short command lines from the PTY.
//! - [`node`]: Node.js with only its standard library.
//! - [`resolve`]: finding interpreters (flag, environment variable, `PATH`) once per process.

use std::sync::Arc;

use spindle_kernel::{Language, LanguageError};

pub mod bash;
pub mod node;
pub mod python;
pub mod resolve;

pub use resolve::Interpreters;

/// The languages Spindle knows, by their canonical names.
pub const NAMES: [&str; 3] = ["python", "bash", "node"];

/// Canonical name for a user-facing language name or alias (`py`, `sh`, `js`, `javascript`, …).
pub fn canonical_name(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => "python",
        "bash" | "sh" | "shell" => "bash",
        "node" | "nodejs" | "js" | "javascript" => "node",
        _ => return None,
    })
}

/// The language called `name`, with interpreters from `interpreters`.
pub fn language(
    name: &str,
    interpreters: &Interpreters,
) -> Result<Arc<dyn Language>, LanguageError> {
    match canonical_name(name) {
        Some("python") => Ok(Arc::new(python::Python::new(interpreters.clone()))),
        Some("bash") => Ok(Arc::new(bash::Bash::new(interpreters.clone()))),
        Some("node") => Ok(Arc::new(node::Node::new(interpreters.clone()))),
        _ => Err(LanguageError::Unsupported(format!(
            "unknown language {name:?}; Spindle knows python, bash and node"
        ))),
    }
}
