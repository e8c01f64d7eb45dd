//! `--sandbox`: where sessions run (on the host, or in Docker containers) and with which limits.

use std::sync::Arc;

use anyhow::Context;
use spindle_kernel::launcher::docker::{parse_size, DEFAULT_IMAGE};
use spindle_kernel::launcher::HostMount;
use spindle_kernel::{DockerConfig, DockerLauncher, Launcher, LocalPtyLauncher};

/// Where sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SandboxKind {
    /// Local processes on the host (no sandbox).
    #[default]
    None,
    /// Each process in its own locked-down Docker container.
    Docker,
}

/// Sandbox flags, shared by every command that makes sessions (`run`, `serve`, `repl`, `chat`,
/// `mcp`, `kernel`).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Run sessions in a sandbox: `docker` (one container per process) or `none`.
    #[arg(long, value_enum, default_value = "none", env = "SPINDLE_SANDBOX")]
    pub sandbox: SandboxKind,
    /// The sandbox image (scripts/sandbox-image.sh builds the default).
    #[arg(long, default_value = DEFAULT_IMAGE, env = "SPINDLE_SANDBOX_IMAGE")]
    pub image: String,
    /// Memory limit of a sandbox (swap is off), like 512m or 2g.
    #[arg(long, value_name = "SIZE", default_value = "1g")]
    pub memory: String,
    /// CPUs a sandbox may use.
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub cpus: f64,
    /// Most processes and threads in a sandbox.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub pids: u64,
    /// Docker network mode of a sandbox: `none` (no network) or, on purpose, `bridge`.
    #[arg(long, value_name = "MODE", default_value = "none")]
    pub network: String,
    /// Size of the sandbox's writable /work (tmpfs).
    #[arg(long, value_name = "SIZE", default_value = "512m")]
    pub workdir_size: String,
    /// A host directory to mount as the sandbox's work directory (/work), read-only.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<std::path::PathBuf>,
    /// Mount that directory read-write (it must be writable by the sandbox's user).
    #[arg(long, requires = "mount")]
    pub mount_rw: bool,
}

impl Default for SandboxArgs {
    fn default() -> Self {
        Self {
            sandbox: SandboxKind::None,
            image: DEFAULT_IMAGE.into(),
            memory: "1g".into(),
            cpus: 1.0,
            pids: 256,
            network: "none".into(),
            workdir_size: "512m".into(),
            mount: None,
            mount_rw: false,
        }
    }
}

impl SandboxArgs {
    /// The Docker settings these flags describe.
    pub fn docker_config(&self) -> anyhow::Result<DockerConfig> {
        Ok(DockerConfig {
            image: self.image.clone(),
            memory: parse_size(&self.memory).context("--memory")?,
            cpus: self.cpus,
            pids: self.pids,
            network: self.network.clone(),
            workdir_size: parse_size(&self.workdir_size).context("--workdir-size")?,
            mount: match &self.mount {
                Some(dir) => Some(HostMount::new(dir, self.mount_rw).map_err(anyhow::Error::msg)?),
                None => None,
            },
            ..DockerConfig::default()
        })
    }

    /// The launcher: fails (never falls back to the host) when the sandbox cannot be had.
    pub fn launcher(&self) -> anyhow::Result<Arc<dyn Launcher>> {
        Ok(match self.sandbox {
            SandboxKind::None => Arc::new(LocalPtyLauncher),
            SandboxKind::Docker => {
                let cfg = self.docker_config()?;
                let l = DockerLauncher::connect(cfg)?;
                tracing::info!(engine = %l.engine(), image = %self.image, "sessions run in Docker sandboxes");
                Arc::new(l)
            }
        })
    }

    /// The launcher of an embedded kernel, or `None` when the sessions live in a `spindle
    /// serve` (`--connect`), whose own `--sandbox` decides. Asking for a sandbox there is an
    /// error rather than a promise this process cannot keep.
    pub fn launcher_unless_connected(
        &self,
        connect: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Arc<dyn Launcher>>> {
        match (connect, self.sandbox) {
            (None, _) => self.launcher().map(Some),
            (Some(_), SandboxKind::None) => Ok(None),
            (Some(path), SandboxKind::Docker) => anyhow::bail!(
                "--sandbox cannot apply to the sessions of the spindle serve at {}: start that \
                 server with `spindle serve --sandbox docker` instead (and leave --sandbox off here)",
                path.display()
            ),
        }
    }

    /// These settings as command-line flags (for kernelspecs, whose argv starts `spindle
    /// kernel`); empty when there is no sandbox.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv = match self.sandbox {
            SandboxKind::None => return Vec::new(),
            SandboxKind::Docker => vec![
                "--sandbox".into(),
                "docker".into(),
                "--image".into(),
                self.image.clone(),
                "--memory".into(),
                self.memory.clone(),
                "--cpus".into(),
                self.cpus.to_string(),
                "--pids".into(),
                self.pids.to_string(),
                "--network".into(),
                self.network.clone(),
                "--workdir-size".into(),
                self.workdir_size.clone(),
            ],
        };
        if let Some(dir) = &self.mount {
            // Absolute, so the kernelspec works from any directory.
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            argv.extend(["--mount".into(), dir.display().to_string()]);
            if self.mount_rw {
                argv.push("--mount-rw".into());
            }
        }
        argv
    }
}

/// Remove, in the background, the containers of Spindle hosts of this machine that died
/// (kill -9) without removing theirs: every host entry point calls it at start, sandboxed or
/// not, so nothing a dead host left outlives the next start. Only when an engine may be there
/// (`DOCKER_HOST` set, or the local socket exists); `SPINDLE_SANDBOX_SWEEP=0` turns it off.
/// A sandboxed start also sweeps, synchronously, when its launcher connects.
pub fn sweep_in_background() {
    if std::env::var("SPINDLE_SANDBOX_SWEEP").is_ok_and(|v| v == "0") {
        return;
    }
    let remote = std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty());
    if !remote && !std::path::Path::new("/var/run/docker.sock").exists() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("spindle-sweep".into())
        .spawn(
            || match spindle_kernel::launcher::docker::sweep_dead_hosts(None) {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed containers of dead Spindle hosts"),
                Err(e) => tracing::debug!(error = %e, "no sweep of dead hosts' containers"),
            },
        );
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start the sweep of dead hosts' containers");
    }
}

/// The host's own sandbox settings (`spindle serve --sandbox …`), the base of per-session
/// requests.
static HOST_SANDBOX: std::sync::OnceLock<(SandboxKind, DockerConfig)> = std::sync::OnceLock::new();

/// Remember the host's sandbox settings (once, at start).
pub fn set_host_defaults(args: &SandboxArgs) -> anyhow::Result<()> {
    let _ = HOST_SANDBOX.set((args.sandbox, args.docker_config()?));
    Ok(())
}

/// The launcher a `create_session` asks for with its `sandbox` field: `None` means the host's
/// own. Fails closed: a sandbox that cannot be had is an error, never a local process.
pub async fn for_request(
    req: &spindle_protocol::SandboxRequest,
) -> Result<Option<Arc<dyn Launcher>>, String> {
    let (host_kind, base) = HOST_SANDBOX
        .get()
        .cloned()
        .unwrap_or((SandboxKind::None, DockerConfig::default()));
    match req.kind.as_str() {
        "none" if host_kind == SandboxKind::None => Ok(None),
        "none" => {
            Err("this host runs every session in a sandbox; it starts none on the host".into())
        }
        "docker" => {
            let cfg = DockerConfig {
                image: req.image.clone().unwrap_or(base.image.clone()),
                memory: req.memory.unwrap_or(base.memory),
                cpus: req.cpus.unwrap_or(base.cpus),
                pids: req.pids.unwrap_or(base.pids),
                network: req.network.clone().unwrap_or(base.network.clone()),
                ..base
            };
            let l = tokio::task::spawn_blocking(move || DockerLauncher::connect(cfg))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(Some(Arc::new(l)))
        }
        other => Err(format!(
            "unknown sandbox kind {other:?}; use docker or none"
        )),
    }
}
