//! `spindle kernel install`: kernelspecs that make Jupyter start `spindle kernel`.
//!
//! Three specs are written, `<name>-python`, `<name>-bash` and `<name>-node` (`<name>` is
//! `spindle` unless `--name` says otherwise), each a `kernel.json` whose argv starts with the
//! absolute path of the running binary. Where they go:
//!
//! - `--user` (the default): the Jupyter user data dir, `$JUPYTER_DATA_DIR` or
//!   `$XDG_DATA_HOME/jupyter` or `~/.local/share/jupyter`;
//! - `--sys-prefix`: `$VIRTUAL_ENV/share/jupyter` when a virtualenv is active, else
//!   `<sys.prefix>/share/jupyter` of the `python3` on `PATH` (asked by running it), which is
//!   the environment whose `jupyter` would look there;
//! - `--prefix DIR`: `DIR/share/jupyter`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jupyter_protocol::JupyterKernelspec;
use serde_json::json;

use crate::common::InterpreterArgs;

/// Where to install.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstallArgs {
    /// Install for the current user (the default).
    #[arg(long, conflicts_with_all = ["sys_prefix", "prefix"])]
    pub user: bool,
    /// Install into the active virtualenv (or the prefix of `python3` on PATH).
    #[arg(long, conflicts_with = "prefix")]
    pub sys_prefix: bool,
    /// Install under DIR/share/jupyter/kernels.
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<PathBuf>,
    /// Name prefix of the kernelspecs: NAME-python, NAME-bash, NAME-node.
    #[arg(long, default_value = "spindle")]
    pub name: String,
    /// Install only these languages (comma-separated; default: python,bash,node).
    #[arg(long, value_delimiter = ',', value_name = "LANGS")]
    pub languages: Vec<String>,
    /// With `--sandbox docker`: install the sandboxed variants, NAME-LANG-sandbox, whose
    /// kernels run in Docker containers with these limits.
    #[command(flatten)]
    pub sandbox: crate::sandbox::SandboxArgs,
}

/// One language as Jupyter sees it.
pub struct Flavour {
    /// Spindle's name for it.
    pub spindle: &'static str,
    /// The kernelspec's `language`.
    pub language: &'static str,
    pub display: &'static str,
}

pub const FLAVOURS: [Flavour; 3] = [
    Flavour {
        spindle: "python",
        language: "python",
        display: "Python 3 (Spindle)",
    },
    Flavour {
        spindle: "bash",
        language: "bash",
        display: "Bash (Spindle)",
    },
    Flavour {
        spindle: "node",
        language: "javascript",
        display: "Node.js (Spindle)",
    },
];

/// Install the kernelspecs; prints where each went.
pub fn install(args: &InstallArgs, interp: &InterpreterArgs) -> anyhow::Result<()> {
    let base = kernels_dir(args)?;
    let exe = std::env::current_exe().context("cannot find the spindle binary's path")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let wanted: Vec<String> = args
        .languages
        .iter()
        .map(|l| {
            spindle_languages::canonical_name(l.trim())
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("unknown language {l:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let sandboxed = args.sandbox.sandbox != crate::sandbox::SandboxKind::None;
    if sandboxed {
        // Bad limits are refused now, not at every kernel start.
        args.sandbox.docker_config()?;
    }
    for f in FLAVOURS.iter() {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == f.spindle) {
            continue;
        }
        let name = if sandboxed {
            format!("{}-{}-sandbox", args.name, f.spindle)
        } else {
            format!("{}-{}", args.name, f.spindle)
        };
        let dir = base.join(&name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let spec = if sandboxed {
            sandboxed_kernelspec(&exe, f, &args.sandbox)
        } else {
            kernelspec(&exe, f, interp)
        };
        let text = serde_json::to_string_pretty(&spec)?;
        std::fs::write(dir.join("kernel.json"), text + "\n")
            .with_context(|| format!("cannot write {}", dir.join("kernel.json").display()))?;
        println!("installed kernelspec {name} in {}", dir.display());
    }
    Ok(())
}

/// The kernelspec for one flavour.
pub fn kernelspec(exe: &Path, f: &Flavour, interp: &InterpreterArgs) -> JupyterKernelspec {
    let mut argv = vec![exe.display().to_string()];
    // Pin the interpreter: the one chosen at install time (flag or environment variable), else
    // the one PATH gives now, resolved to the real binary, so that no kernel start pays for a
    // shim (pyenv's `python3` costs ~150 ms). One that cannot be found is left to the kernel,
    // which reports it clearly at start.
    let chosen = match f.spindle {
        "python" => &interp.python,
        "bash" => &interp.bash,
        _ => &interp.node,
    };
    let pinned = match chosen {
        Some(path) if !path.is_empty() => Some(absolute(path)),
        _ => interp
            .interpreters()
            .resolve(f.spindle)
            .ok()
            .map(|r| r.path.display().to_string()),
    };
    if let Some(path) = pinned {
        argv.push(format!("--{}", f.spindle));
        argv.push(path);
    }
    argv.extend(["kernel", "-f", "{connection_file}", "--language", f.spindle].map(String::from));
    let metadata: HashMap<String, serde_json::Value> = [
        ("debugger".to_string(), json!(false)),
        (
            "spindle".to_string(),
            json!({"language": f.spindle, "version": env!("CARGO_PKG_VERSION")}),
        ),
    ]
    .into_iter()
    .collect();
    JupyterKernelspec {
        argv,
        display_name: f.display.to_string(),
        language: f.language.to_string(),
        metadata: Some(metadata),
        interrupt_mode: Some("signal".to_string()),
        env: Some(HashMap::new()),
    }
}

/// The kernelspec of a sandboxed flavour: `spindle kernel … --sandbox docker` with the limits
/// chosen at install time. No host interpreter is pinned (the image's runs).
pub fn sandboxed_kernelspec(
    exe: &Path,
    f: &Flavour,
    sandbox: &crate::sandbox::SandboxArgs,
) -> JupyterKernelspec {
    let mut argv = vec![exe.display().to_string()];
    argv.extend(["kernel", "-f", "{connection_file}", "--language", f.spindle].map(String::from));
    argv.extend(sandbox.to_argv());
    let metadata: HashMap<String, serde_json::Value> = [
        ("debugger".to_string(), json!(false)),
        (
            "spindle".to_string(),
            json!({"language": f.spindle, "version": env!("CARGO_PKG_VERSION"),
                   "sandbox": "docker", "image": sandbox.image}),
        ),
    ]
    .into_iter()
    .collect();
    JupyterKernelspec {
        argv,
        display_name: format!("{} [Docker sandbox]", f.display),
        language: f.language.to_string(),
        metadata: Some(metadata),
        interrupt_mode: Some("signal".to_string()),
        env: Some(HashMap::new()),
    }
}

/// A command with a slash becomes absolute (a venv's python must not be canonicalised: it
/// would lose its `pyvenv.cfg`); a bare name stays a name looked up on PATH.
fn absolute(cmd: &str) -> String {
    let p = Path::new(cmd);
    if !cmd.contains('/') || p.is_absolute() {
        return cmd.to_string();
    }
    std::env::current_dir()
        .map(|d| d.join(p).display().to_string())
        .unwrap_or_else(|_| cmd.to_string())
}

fn kernels_dir(args: &InstallArgs) -> anyhow::Result<PathBuf> {
    let data = if let Some(prefix) = &args.prefix {
        prefix.join("share").join("jupyter")
    } else if args.sys_prefix {
        sys_prefix()?.join("share").join("jupyter")
    } else {
        user_data_dir()?
    };
    Ok(data.join("kernels"))
}

/// Jupyter's user data dir on Linux, as jupyter_core computes it.
fn user_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("JUPYTER_DATA_DIR").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(d).join("jupyter"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/jupyter"))
}

fn sys_prefix() -> anyhow::Result<PathBuf> {
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .context("--sys-prefix: no $VIRTUAL_ENV and cannot run python3 to ask for sys.prefix")?;
    anyhow::ensure!(
        out.status.success(),
        "--sys-prefix: python3 failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(
        !prefix.is_empty(),
        "--sys-prefix: python3 printed no prefix"
    );
    Ok(PathBuf::from(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_shape() {
        let interp = InterpreterArgs {
            python: Some("/venv/bin/python".into()),
            ..Default::default()
        };
        let spec = kernelspec(Path::new("/usr/bin/spindle"), &FLAVOURS[0], &interp);
        assert_eq!(
            spec.argv,
            [
                "/usr/bin/spindle",
                "--python",
                "/venv/bin/python",
                "kernel",
                "-f",
                "{connection_file}",
                "--language",
                "python"
            ]
        );
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["interrupt_mode"], "signal");
        assert_eq!(v["language"], "python");
        assert!(v["env"].is_object() && v["metadata"].is_object());
        let node = kernelspec(Path::new("/s"), &FLAVOURS[2], &interp);
        assert_eq!(node.language, "javascript");
        assert!(!node.argv.contains(&"--python".to_string()));
    }

    #[test]
    fn sandboxed_spec_passes_the_sandbox_flags_to_the_kernel() {
        let sandbox = crate::sandbox::SandboxArgs {
            sandbox: crate::sandbox::SandboxKind::Docker,
            memory: "300m".into(),
            pids: 50,
            ..Default::default()
        };
        let spec = sandboxed_kernelspec(Path::new("/s"), &FLAVOURS[1], &sandbox);
        let argv = spec.argv.join(" ");
        assert_eq!(
            argv,
            "/s kernel -f {connection_file} --language bash --sandbox docker --image \
             spindle-sandbox:latest --memory 300m --cpus 1 --pids 50 --network none \
             --workdir-size 512m"
        );
        assert!(
            spec.display_name.contains("sandbox"),
            "{}",
            spec.display_name
        );
        // The argv is one the command line accepts.
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(&spec.argv).unwrap();
        let Some(crate::cli::Command::Kernel(k)) = cli.command else {
            panic!("not the kernel command")
        };
        assert_eq!(k.sandbox.sandbox, crate::sandbox::SandboxKind::Docker);
        assert_eq!(k.sandbox.pids, 50);
    }

    #[test]
    fn regression_unpinned_interpreter_is_resolved_at_install_time() {
        // Without a choice, the spec pins the real binary PATH gives now, not a shim.
        let spec = kernelspec(Path::new("/s"), &FLAVOURS[0], &InterpreterArgs::default());
        let at = spec
            .argv
            .iter()
            .position(|a| a == "--python")
            .expect("pinned");
        let python = &spec.argv[at + 1];
        assert!(Path::new(python).is_absolute(), "{python}");
        assert!(!python.contains("shims"), "{python}");
    }
}
