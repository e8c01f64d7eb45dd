//! Finding interpreters, once.
//!
//! `python3` on `PATH` can be a shim (pyenv's costs ~150 ms per start), so each interpreter is
//! resolved once per process to the binary that really runs, and that path is used for every
//! session. The command comes from, in order: an explicit setting (a CLI flag), the environment
//! variable (`SPINDLE_PYTHON`, `SPINDLE_BASH`, `SPINDLE_NODE`), then the default name on `PATH`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use spindle_kernel::LanguageError;

/// Configured interpreter commands; `None` means "the environment variable, else the default".
#[derive(Debug, Clone, Default)]
pub struct Interpreters {
    pub python: Option<String>,
    pub bash: Option<String>,
    pub node: Option<String>,
}

/// A resolved interpreter: the real binary, and the version it reported where we asked it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub path: PathBuf,
    pub version: Option<String>,
}

impl Interpreters {
    /// The command to use for `language`: explicit setting, then env var, then default.
    pub fn command(&self, language: &str) -> (String, &'static str) {
        let (explicit, var, default) = match language {
            "python" => (&self.python, "SPINDLE_PYTHON", "python3"),
            "bash" => (&self.bash, "SPINDLE_BASH", "bash"),
            _ => (&self.node, "SPINDLE_NODE", "node"),
        };
        let cmd = explicit
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var(var).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| default.to_string());
        (cmd, var)
    }

    /// Resolve the interpreter for `language` (cached per command for the life of the process).
    pub fn resolve(&self, language: &str) -> Result<Resolved, LanguageError> {
        let (cmd, var) = self.command(language);
        static CACHE: OnceLock<Mutex<HashMap<(String, String), Resolved>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let key = (language.to_string(), cmd.clone());
        if let Some(hit) = cache.lock().expect("resolver cache").get(&key) {
            return Ok(hit.clone());
        }
        let found =
            find_on_path(&cmd).ok_or_else(|| LanguageError::InterpreterNotFound {
                language: language.to_string(),
                detail: format!(
                "`{cmd}` is not on PATH; install it or point Spindle at it with {var}=/path/to/{} \
                 (or the --{language} flag)",
                Path::new(&cmd).file_name().and_then(|s| s.to_str()).unwrap_or("interpreter")
            ),
            })?;
        let resolved = if language == "python" {
            resolve_python(&found, var)?
        } else {
            Resolved {
                path: std::fs::canonicalize(&found).unwrap_or(found),
                version: None,
            }
        };
        tracing::debug!(language, path = %resolved.path.display(), "interpreter resolved");
        cache
            .lock()
            .expect("resolver cache")
            .insert(key, resolved.clone());
        Ok(resolved)
    }
}

/// Ask Python for `sys.executable`: that sees through shims, and keeps a venv's own path (a
/// venv's `python` must not be canonicalised, or it loses its `pyvenv.cfg`).
fn resolve_python(found: &Path, var: &str) -> Result<Resolved, LanguageError> {
    let out = Command::new(found)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3]); print(int(sys.version_info >= (3, 8)))",
        ])
        .output()
        .map_err(|e| LanguageError::InterpreterNotFound {
            language: "python".into(),
            detail: format!("could not run {}: {e}; set {var}", found.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (exe, version, ok) = (lines.next(), lines.next(), lines.next());
    match (exe, version, ok) {
        (Some(exe), Some(version), Some("1")) if out.status.success() && !exe.is_empty() => {
            Ok(Resolved {
                path: PathBuf::from(exe),
                version: Some(version.to_string()),
            })
        }
        (_, Some(version), Some("0")) => Err(LanguageError::InterpreterNotFound {
            language: "python".into(),
            detail: format!(
                "{} is Python {version}; Spindle needs 3.8 or newer (set {var})",
                found.display()
            ),
        }),
        _ => Err(LanguageError::InterpreterNotFound {
            language: "python".into(),
            detail: format!(
                "{} did not run as Python: {}; set {var}",
                found.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

/// `which`: a path with a slash is taken as is; a bare name is looked up on `PATH`.
pub fn find_on_path(cmd: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(cmd))
            .find(|p| is_exec(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interpreter_names_the_variable() {
        let i = Interpreters {
            node: Some("/nonexistent/node-xyz".into()),
            ..Default::default()
        };
        let err = i.resolve("node").unwrap_err().to_string();
        assert!(err.contains("SPINDLE_NODE"), "{err}");
        assert!(err.contains("/nonexistent/node-xyz"), "{err}");
    }

    #[test]
    fn python_resolves_to_a_real_interpreter() {
        let r = Interpreters::default().resolve("python").unwrap();
        assert!(r.path.is_absolute());
        assert!(!r.path.to_string_lossy().contains("shims"), "{:?}", r.path);
        assert!(r.version.unwrap().starts_with('3'));
    }
}
