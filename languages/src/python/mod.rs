//! Python. See `docs/child-protocol.md`.
//!
//! The interpreter runs `python -c <loader>`: like the REPL, `sys.path[0]` is then the working
//! directory, so the user's modules import as they would interactively. The loader
//! (`loader.py`) runs the bootstrap (`bootstrap.py`, written into the run directory) from the
//! code cache when the cache holds it compiled for this interpreter, and compiles it (filling
//! the cache) otherwise: compiling 55 kB of source leaves about 3.5 MB with the allocator for
//! the life of the session, unmarshalling costs a tenth of that. The bootstrap needs only the
//! standard library of CPython ≥ 3.8.
//!
//! IPython syntax (magics, `!cmd`, `obj?`, `get_ipython()`) lives in `magics.py`, written into
//! the run directory as `spindle_magics.py` and imported by the bootstrap the first time a cell
//! needs it, so sessions that never use it start as fast as before.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use spindle_kernel::{Language, LanguageError, LaunchContext, LaunchSpec};

use crate::Interpreters;

/// The bootstrap that runs inside the child, embedded at build time.
pub const BOOTSTRAP: &str = include_str!("bootstrap.py");

/// The file name of [`BOOTSTRAP`] in the run directory (read by [`LOADER`]).
pub const BOOTSTRAP_FILE: &str = "spindle_bootstrap.py";

/// What `python -c` runs: the bootstrap, from the code cache or compiled.
pub const LOADER: &str = include_str!("loader.py");

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
        // Always set, so that an inherited value (`SPINDLE_CODE_CACHE=0`) never reaches the
        // loader as a path.
        env.insert(
            "SPINDLE_CODE_CACHE".to_string(),
            code_cache().map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
        );
        Ok(LaunchSpec {
            program: resolved.path,
            args: vec!["-c".to_string(), LOADER.to_string()],
            env,
            files: vec![
                (BOOTSTRAP_FILE.to_string(), BOOTSTRAP.as_bytes().to_vec()),
                (MAGICS_FILE.to_string(), MAGICS.as_bytes().to_vec()),
                ("spindle_comm.py".to_string(), COMM.as_bytes().to_vec()),
            ],
        })
    }
}

/// The code cache's path prefix for this build's bootstrap
/// (`$XDG_CACHE_HOME/spindle/python/bootstrap-<hash of the source>`; the loader appends the
/// interpreter's tag and version), or `None` when there is no private place for it.
/// `SPINDLE_CODE_CACHE=0` turns the cache off.
fn code_cache() -> Option<PathBuf> {
    static CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            if std::env::var_os("SPINDLE_CODE_CACHE").is_some_and(|v| v == "0") {
                return None;
            }
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| Path::new(&h).join(".cache"))
                })?;
            let dir = base.join("spindle").join("python");
            match private_dir(&dir) {
                Ok(()) => Some(dir.join(format!("bootstrap-{:016x}", fnv1a(BOOTSTRAP.as_bytes())))),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "no Python code cache");
                    None
                }
            }
        })
        .clone()
}

/// Create `dir` (0700) if needed and check it is ours and writable by nobody else: whoever
/// can write there can run code in every Python session.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(
            "not a directory of this user's that only they can write",
        ));
    }
    Ok(())
}

/// FNV-1a, 64 bits: names the cache entry after the bootstrap's source.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_runs_the_loader_with_dash_c_and_writes_the_bootstrap() {
        let spec = Python::new(Interpreters::default())
            .launch(&LaunchContext {
                run_dir: std::env::temp_dir(),
                env: Default::default(),
            })
            .unwrap();
        assert!(spec.program.is_absolute());
        assert_eq!(spec.args.len(), 2);
        assert_eq!(spec.args[0], "-c");
        assert_eq!(spec.args[1], LOADER);
        assert!(spec
            .files
            .iter()
            .any(|(name, bytes)| name == BOOTSTRAP_FILE && bytes == BOOTSTRAP.as_bytes()));
        if std::env::var_os("MPLBACKEND").is_none() {
            assert_eq!(
                spec.env.get("MPLBACKEND").map(String::as_str),
                Some(MPL_BACKEND)
            );
        }
    }

    #[test]
    fn loader_fits_in_one_argument() {
        // Linux caps a single argv string at 128 KiB (MAX_ARG_STRLEN).
        assert!(LOADER.len() < 120 * 1024, "{} bytes", LOADER.len());
        assert!(!LOADER.contains('\0'));
    }
}
