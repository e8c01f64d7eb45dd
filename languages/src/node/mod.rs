//! Node.js. See `docs/child-protocol.md`.
//!
//! The bootstrap (`bootstrap.js`, standard library only) is written into the session's run
//! directory and run as a CommonJS script: `node <run_dir>/node_bootstrap.js`. A file starts as
//! fast as `-e` and keeps the bootstrap's own stack frames recognisable, so they can be cut from
//! tracebacks. Cells run through the inspector's REPL mode (top-level `await`, re-declarable
//! `let`/`const`); requests arrive as JSON lines (the trait's default encoding).
//!
//! `--no-force-async-hooks-checks`: an interrupt stops busy JavaScript by terminating it, which
//! can leave Node's async-context stack unbalanced when it stops a timer callback; with the
//! default checks on, Node then aborts the process instead of carrying on.
//!
//! Active lines are not supported: reporting them would mean rewriting the user's code.

use spindle_kernel::{Language, LanguageError, LaunchContext, LaunchSpec};

use crate::Interpreters;

/// The bootstrap that runs inside the child, embedded at build time.
pub const BOOTSTRAP: &str = include_str!("bootstrap.js");

/// The comm registry (Jupyter comms, the `comm` global), written beside the bootstrap as
/// `spindle_comm.js` and loaded on first use.
pub const COMM: &str = include_str!("spindle_comm.js");

/// Name of the bootstrap file in the run directory.
pub const BOOTSTRAP_FILE: &str = "node_bootstrap.js";

#[derive(Debug, Clone)]
pub struct Node {
    interpreters: Interpreters,
}

impl Node {
    pub fn new(interpreters: Interpreters) -> Self {
        Self { interpreters }
    }
}

impl Language for Node {
    fn name(&self) -> &str {
        "node"
    }

    fn supports_comms(&self) -> bool {
        true
    }

    fn launch(&self, ctx: &LaunchContext) -> Result<LaunchSpec, LanguageError> {
        let resolved = self.interpreters.resolve("node")?;
        let script = ctx.run_dir.join(BOOTSTRAP_FILE);
        let script = script.to_str().ok_or_else(|| {
            LanguageError::Other(format!(
                "node: run directory {} is not valid UTF-8",
                ctx.run_dir.display()
            ))
        })?;
        Ok(LaunchSpec {
            program: resolved.path,
            args: vec![
                "--no-force-async-hooks-checks".to_string(),
                script.to_string(),
            ],
            env: Default::default(),
            files: vec![
                (BOOTSTRAP_FILE.into(), BOOTSTRAP.as_bytes().to_vec()),
                ("spindle_comm.js".into(), COMM.as_bytes().to_vec()),
            ],
        })
    }

    fn supports_active_lines(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn launch_runs_the_bootstrap_file_from_the_run_dir() {
        let node = Node::new(Interpreters::default());
        let ctx = LaunchContext {
            run_dir: PathBuf::from("/tmp/spindle-test-run"),
            env: Default::default(),
        };
        let spec = node.launch(&ctx).expect("node is installed");
        assert!(spec.program.is_absolute());
        assert_eq!(
            spec.args.last().map(String::as_str),
            Some("/tmp/spindle-test-run/node_bootstrap.js")
        );
        let names: Vec<&str> = spec.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [BOOTSTRAP_FILE, "spindle_comm.js"]);
        assert!(!node.supports_active_lines());
    }

    #[test]
    fn missing_node_is_a_typed_error() {
        let node = Node::new(Interpreters {
            node: Some("/nonexistent/nodejs".into()),
            ..Default::default()
        });
        let ctx = LaunchContext {
            run_dir: PathBuf::from("/tmp/x"),
            env: Default::default(),
        };
        assert!(matches!(
            node.launch(&ctx),
            Err(LanguageError::InterpreterNotFound { .. })
        ));
    }
}
