//! Python. See `docs/child-protocol.md`.
//!
//! The interpreter runs `python -c <bootstrap>`: like the REPL, `sys.path[0]` is then the
//! working directory, so the user's modules import as they would interactively. The bootstrap
//! (`bootstrap.py` beside this file) needs only the standard library of CPython ≥ 3.8.
//!
//! IPython syntax (magics, `!cmd`, `obj?`, `get_ipython()`) lives in `magics.py`, written into
//! the run directory as `spindle_magics.py` and imported by the bootstrap the first time a cell
//! needs it, so sessions that never use it start as fast as before.

use std::collections::HashMap;

use spindle_kernel::{Language, LanguageError, LaunchContext, LaunchSpec};

use crate::Interpreters;

/// The bootstrap that runs inside the child, embedded at build time.
pub const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// IPython syntax for the bootstrap: IPython's own transformers and magics when IPython is
/// importable, else a built-in subset. Loaded lazily from the run directory.
pub const MAGICS: &str = include_str!("magics.py");

/// The file name of [`MAGICS`] in the run directory (the bootstrap's `_load_sidecar("magics")`).
pub const MAGICS_FILE: &str = "spindle_magics.py";

/// The comm registry (Jupyter comms, what ipywidgets plugs into), written into the run directory
/// as `spindle_comm.py`; the bootstrap's `_comms()` loads it on first need.
pub const COMM: &str = include_str!("spindle_comm.py");

/// The matplotlib backend the bootstrap provides (a module it registers in `sys.modules`).
pub const MPL_BACKEND: &str = "module://spindle_inline";

#[derive(Debug, Clone)]
pub struct Python {
    interpreters: Interpreters,
}

impl Python {
    pub fn new(interpreters: Interpreters) -> Self {
        Self { interpreters }
    }
}

impl Language for Python {
    fn name(&self) -> &str {
        "python"
    }

    fn supports_comms(&self) -> bool {
        true
    }

    fn launch(&self, ctx: &LaunchContext) -> Result<LaunchSpec, LanguageError> {
        let resolved = self.interpreters.resolve("python")?;
        let mut env = HashMap::new();
        // Figures appear as images with no setup, unless the user chose a backend. The
        // bootstrap takes the variable back out of `os.environ`, so subprocesses (another
        // Python, which has no `spindle_inline`) do not inherit it.
        if std::env::var_os("MPLBACKEND").is_none() && !ctx.env.contains_key("MPLBACKEND") {
            env.insert("MPLBACKEND".to_string(), MPL_BACKEND.to_string());
        }
        Ok(LaunchSpec {
            program: resolved.path,
            args: vec!["-c".to_string(), BOOTSTRAP.to_string()],
            env,
            files: vec![
                (MAGICS_FILE.to_string(), MAGICS.as_bytes().to_vec()),
                ("spindle_comm.py".to_string(), COMM.as_bytes().to_vec()),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_runs_the_bootstrap_with_dash_c() {
        let spec = Python::new(Interpreters::default())
            .launch(&LaunchContext {
                run_dir: std::env::temp_dir(),
                env: Default::default(),
            })
            .unwrap();
        assert!(spec.program.is_absolute());
        assert_eq!(spec.args.len(), 2);
        assert_eq!(spec.args[0], "-c");
        assert_eq!(spec.args[1], BOOTSTRAP);
        if std::env::var_os("MPLBACKEND").is_none() {
            assert_eq!(
                spec.env.get("MPLBACKEND").map(String::as_str),
                Some(MPL_BACKEND)
            );
        }
    }

    #[test]
    fn bootstrap_fits_in_one_argument() {
        // Linux caps a single argv string at 128 KiB (MAX_ARG_STRLEN).
        assert!(BOOTSTRAP.len() < 120 * 1024, "{} bytes", BOOTSTRAP.len());
        assert!(!BOOTSTRAP.contains('\0'));
    }
}
